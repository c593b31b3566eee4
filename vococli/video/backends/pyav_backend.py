"""PyAV: sequential decoding that skips damaged packets and reads what decord refuses.

`to_ndarray` does not apply display rotation (the frame only exposes `rotation`), so frames are
rotated here to match decord's.
"""

from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np

from vococli.video.backends.base import FrameBatch, VideoBackend, decode_size, register
from vococli.video.timestamps import open_container


@register
class PyAVBackend(VideoBackend):
    """Opening costs nothing: `stream_timestamps` has already opened the file with PyAV."""

    name = "pyav"

    def read(self, frames: np.ndarray, batch_size: int) -> Iterator[FrameBatch]:
        """Decode sequentially from the keyframe before the first wanted frame; skip bad packets."""
        import av

        if len(frames) == 0:
            return
        wanted = {round(float(self.timestamps[i]), 6): pos for pos, i in enumerate(frames)}
        last_wanted = max(wanted)
        container = open_container(self.path)
        batch: list[tuple[int, float, np.ndarray]] = []
        with container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = float(stream.time_base)
            first = float(self.timestamps[frames[0]])
            if first > float(self.timestamps[0]):
                container.seek(int(first / tb), stream=stream, backward=True, any_frame=False)
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError:
                    continue  # a corrupt packet: its frames are not yielded, so count as lost
                for frame in decoded:
                    if frame.pts is None:
                        continue
                    t = round(frame.pts * tb, 6)
                    pos = wanted.pop(t, None)
                    if pos is None:
                        continue
                    size = decode_size(frame.width, frame.height, self.fit)
                    if size is not None:  # scaled by FFmpeg before conversion: no full-size RGB copy
                        frame = frame.reformat(width=size[0], height=size[1])
                    img = _rotate(frame.to_ndarray(format="rgb24"), rotation(frame))
                    batch.append((pos, t, img))
                    if len(batch) == batch_size:
                        yield _stack(batch)
                        batch = []
                if not wanted or (packet.pts is not None and packet.pts * tb > last_wanted + 5.0):
                    break
        if batch:
            yield _stack(batch)


def rotation(frame) -> float:
    return getattr(frame, "rotation", 0) or 0


def _rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    """Apply a display rotation (counter-clockwise degrees, a multiple of 90)."""
    k = int(round(degrees / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(img, k)) if k else img


def _stack(batch) -> FrameBatch:
    shapes = {img.shape for _, _, img in batch}
    if len(shapes) > 1:  # resolution changes mid-stream: bring frames to the first one's size
        warnings.warn("frame size changes inside the video; frames are resized to the first size")
        h, w = batch[0][2].shape[:2]
        from PIL import Image

        batch = [(o, t, np.asarray(Image.fromarray(img).resize((w, h)))) for o, t, img in batch]
    return FrameBatch([o for o, _, _ in batch], [t for _, t, _ in batch], np.stack([img for _, _, img in batch]))
