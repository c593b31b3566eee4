"""Reading frames and their true timestamps from a video file.

Timestamps come from the stream's own presentation timestamps (PyAV demux, no decoding), never
from index / fps arithmetic, which is wrong for variable frame rate. Pixels come from decord
(the maintained `decord2` package: wheels for Python 3.11 and 3.12, newer FFmpeg, faster than
decord 0.6) and from PyAV where decord cannot open the file, disagrees on the frame count, or
fails mid-stream. PyAV does not apply display rotation, so that path rotates frames itself.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from vococli.errors import UserError


@dataclass(frozen=True)
class Sampling:
    """Which frames to take: every 1/fps seconds between start and end, at most max_frames."""

    fps: float = 1.0
    start: float = 0.0
    end: float | None = None
    max_frames: int | None = None

    def to_dict(self) -> dict:
        return {"fps": self.fps, "start": self.start, "end": self.end, "max_frames": self.max_frames}


@dataclass
class FrameBatch:
    indices: list[int]  # positions in the planned frame list
    timestamps: list[float]
    frames: np.ndarray  # (B, H, W, 3) uint8 RGB


def _open_av(path: Path):
    import av

    try:
        container = av.open(str(path))
    except Exception as e:  # av.error.* for anything FFmpeg cannot parse
        raise UserError(f"{path}: not a readable video ({_short(e)})") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path}: has no video stream")
    return container


def _short(e: Exception) -> str:
    """The first line of an error's message, without FFmpeg's "[Errno N]" prefix."""
    text = getattr(e, "strerror", None) or str(e)
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(text).strip())
    return text.splitlines()[0][:200] if text else type(e).__name__


def stream_timestamps(path: Path) -> np.ndarray:
    """Presentation time (seconds) of every video frame, in display order, from the packets."""
    container = _open_av(path)
    with container:
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        pts = [p.pts for p in container.demux(stream) if p.pts is not None]
    if not pts:
        raise UserError(f"{path}: the video stream has no timestamped frames")
    return np.unique(np.asarray(pts, dtype=np.int64)) * tb


def plan_frames(timestamps: np.ndarray, sampling: Sampling) -> np.ndarray:
    """Indices of the frames to take: the frame on screen at each sampling instant.

    Instants run from max(start, first frame) every 1/fps seconds up to end (or the last frame);
    a frame shown at several instants is taken once. If more than max_frames remain, max_frames
    are spread evenly over them.
    """
    if not math.isfinite(sampling.fps) or sampling.fps <= 0:
        raise UserError(f"--fps must be a positive number, got {sampling.fps}")
    for name, value in (("--start", sampling.start), ("--end", sampling.end)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserError(f"{name} must be a number of seconds from the start of the video (0 or more), got {value}")
    first, last = float(timestamps[0]), float(timestamps[-1])
    t0 = max(sampling.start, first)
    t1 = last if sampling.end is None else min(sampling.end, last)
    if t1 < t0:
        until = "the end of the video" if sampling.end is None else f"--end {sampling.end}"
        raise UserError(f"no frames between --start {sampling.start} and {until} "
                        f"(the video spans {first:.3f}-{last:.3f} s)")
    # more instants than frames only repeat frames: cap them at a few per frame
    n, fps = int(np.floor((t1 - t0) * sampling.fps + 1e-9)) + 1, sampling.fps
    if n > 4 * len(timestamps) + 1:
        n = 4 * len(timestamps) + 1
        fps = (n - 1) / (t1 - t0)
    instants = t0 + np.arange(n) / fps
    # the frame on screen at time t is the last one that started at or before t
    idx = np.searchsorted(timestamps, instants + 1e-6, side="right") - 1
    idx = np.unique(np.clip(idx, 0, len(timestamps) - 1))
    if sampling.max_frames is not None and len(idx) > sampling.max_frames:
        if sampling.max_frames < 1:
            raise UserError("--max-frames must be at least 1")
        idx = idx[np.linspace(0, len(idx) - 1, sampling.max_frames).round().astype(np.int64)]
    return idx


def _rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    """Apply a display rotation (counter-clockwise degrees, a multiple of 90)."""
    k = int(round(degrees / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(img, k)) if k else img


class VideoReader:
    """Frames of one video file at planned indices, read in batches, with true timestamps."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"{self.path}: file not found")
        if not self.path.is_file():
            raise UserError(f"{self.path}: not a file")
        self.timestamps = stream_timestamps(self.path)
        self.lost = 0  # planned frames that could not be decoded
        self.backend = "pyav"
        self._decord = None
        try:
            import decord

            log = getattr(decord, "logging", None)  # FFmpeg's messages on damaged packets: compress
            if log is not None:  # reports the frames lost itself
                log.set_level(log.WARNING if os.environ.get("VOCOCLI_DEBUG") else log.QUIET)
            vr = decord.VideoReader(str(self.path), num_threads=0)
            if len(vr) == len(self.timestamps):
                self._decord, self.backend = vr, "decord"
        except Exception:  # decord refuses some files (e.g. broken metadata): PyAV reads them
            pass

    @property
    def duration(self) -> float:
        return float(self.timestamps[-1] - self.timestamps[0])

    def read(self, indices: np.ndarray, batch_size: int) -> Iterator[FrameBatch]:
        """Yield batches of the frames at `indices` (sorted frame numbers), skipping lost ones."""
        indices = np.asarray(indices)
        order = np.arange(len(indices))
        done = 0
        if self._decord is not None:
            for batch in self._read_decord(indices, order, batch_size):
                if batch is None:  # decord failed mid-stream: PyAV continues from here
                    break
                done = batch.indices[-1] + 1
                yield batch
            else:
                return
        yield from self._read_av(indices[done:], order[done:], batch_size)

    def _read_decord(self, indices, order, batch_size):
        import decord

        for s in range(0, len(indices), batch_size):
            idx = indices[s:s + batch_size]
            try:
                frames = self._decord.get_batch(idx.tolist()).asnumpy()
            except decord.DECORDError:
                yield None
                return
            yield FrameBatch(order[s:s + batch_size].tolist(), self.timestamps[idx].tolist(), frames)

    def _read_av(self, indices, order, batch_size):
        """Decode sequentially from the keyframe before the first wanted frame; skip bad packets."""
        import av

        if len(indices) == 0:
            return
        wanted = {round(float(self.timestamps[i]), 6): int(o) for i, o in zip(indices, order)}
        last_wanted = max(wanted)
        container = _open_av(self.path)
        batch: list[tuple[int, float, np.ndarray]] = []
        with container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = float(stream.time_base)
            first = float(self.timestamps[indices[0]])
            if first > float(self.timestamps[0]):
                container.seek(int(first / tb), stream=stream, backward=True, any_frame=False)
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    continue  # a corrupt packet: its frames count as lost below
                for frame in frames:
                    if frame.pts is None:
                        continue
                    t = round(frame.pts * tb, 6)
                    o = wanted.pop(t, None)
                    if o is None:
                        continue
                    img = _rotate(frame.to_ndarray(format="rgb24"), getattr(frame, "rotation", 0) or 0)
                    batch.append((o, t, img))
                    if len(batch) == batch_size:
                        yield _stack(batch)
                        batch = []
                if not wanted or (packet.pts is not None and packet.pts * tb > last_wanted + 5.0):
                    break
        if batch:
            yield _stack(batch)
        self.lost += len(wanted)


def _stack(batch) -> FrameBatch:
    shapes = {img.shape for _, _, img in batch}
    if len(shapes) > 1:  # resolution changes mid-stream: bring frames to the first one's size
        warnings.warn("frame size changes inside the video; frames are resized to the first size")
        h, w = batch[0][2].shape[:2]
        from PIL import Image

        batch = [(o, t, np.asarray(Image.fromarray(img).resize((w, h)))) for o, t, img in batch]
    return FrameBatch([o for o, _, _ in batch], [t for _, t, _ in batch], np.stack([img for _, _, img in batch]))
