"""Reading frames and their true timestamps from a video file, through the video backends.

Timestamps come from the stream's own presentation timestamps (`stream_timestamps`), never from
index / fps arithmetic, which is wrong for variable frame rate. Pixels come from the backends in
`vococli.video.backends`: by default decord (the maintained `decord2` package: faster than
PyAV), and PyAV where decord cannot open the file, disagrees on the frame count, or fails
mid-stream, in which case PyAV continues from the first frame decord did not deliver.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import numpy as np

from vococli.errors import UserError
from vococli.video.backends import PREFERENCE, CannotOpen, FrameBatch, StreamFailed, VideoBackend, get_backend
from vococli.video.timestamps import frame_size, stream_timestamps


class VideoReader:
    """Frames of one video file at planned indices, read in batches, with true timestamps.

    `backend="auto"` opens the file with the first backend in `PREFERENCE` that can read it and,
    when that one fails mid-stream, hands the remaining frames to the next ones in turn. A named
    backend is used alone, so that what is asked for is what decodes: a file it cannot open is a
    UserError, and the frames after a mid-stream failure count as lost. `backend` is the name of
    the backend that opened the file; `lost` counts planned frames that could not be decoded.
    With `fit` (the model's input size), frames much larger than it are decoded at about that
    size (video/backends/base.decode_size), so memory does not grow with the resolution.
    """

    def __init__(self, path: str | Path, backend: str = "auto", fit: int | None = None):
        order = [get_backend(n) for n in PREFERENCE] if backend == "auto" else [get_backend(backend)]
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"{self.path}: file not found")
        if not self.path.is_file():
            raise UserError(f"{self.path}: not a file")
        self.timestamps = stream_timestamps(self.path)
        self.size = frame_size(self.path)  # (width, height) as coded
        self.fit = fit  # the model's input size: much larger frames are decoded smaller
        self.lost = 0  # planned frames that could not be decoded
        refusals: list[str] = []
        while order:
            cls = order.pop(0)
            try:
                self._first = cls(self.path, self.timestamps, fit)
                break
            except CannotOpen as e:
                refusals.append(f"{cls.name}: {e}")
        else:
            which = f"the {backend} video backend cannot" if backend != "auto" else "no video backend can"
            raise UserError(f"{self.path}: {which} read it ({'; '.join(refusals)})")
        self.backend = self._first.name
        self._fallbacks = order  # tried in turn, each opened when the one before fails mid-stream
        self._opened: dict[str, VideoBackend | None] = {}

    @property
    def duration(self) -> float:
        return float(self.timestamps[-1] - self.timestamps[0])

    def read(self, indices: np.ndarray, batch_size: int) -> Iterator[FrameBatch]:
        """Yield batches of the frames at `indices` (sorted frame numbers), skipping lost ones."""
        indices = np.asarray(indices)
        done = 0  # planned frames dealt with: delivered, or lost before a failure
        for backend in itertools.chain([self._first], self._next_backends()):
            rest, delivered, end = indices[done:], 0, 0
            try:
                for batch in backend.read(rest, batch_size):
                    if not batch.indices:
                        continue
                    delivered += len(batch.indices)
                    end = batch.indices[-1] + 1
                    yield FrameBatch([done + i for i in batch.indices], batch.timestamps, batch.frames)
            except StreamFailed:  # the next backend continues after the last frame delivered
                self.lost += end - delivered
                done += end
                continue
            self.lost += len(rest) - delivered
            return
        self.lost += len(indices) - done  # every backend failed before the end

    def _next_backends(self) -> Iterator[VideoBackend]:
        """The fall-back backends that can open the file, each opened once per reader."""
        for cls in self._fallbacks:
            if cls.name not in self._opened:
                try:
                    self._opened[cls.name] = cls(self.path, self.timestamps, self.fit)
                except CannotOpen:
                    self._opened[cls.name] = None
            if self._opened[cls.name] is not None:
                yield self._opened[cls.name]
