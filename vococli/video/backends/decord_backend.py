"""decord (the maintained `decord2` package): fast random access, display rotation applied.

It refuses some files (e.g. broken metadata), counts frames differently on others, and on some
damaged files raises `DECORDError` for every frame past the damage, a batch failing whole; its
own frame timestamps are garbage on some files, so the stream's are used instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from vococli.video.backends.base import CannotOpen, FrameBatch, StreamFailed, VideoBackend, decode_size, register
from vococli.video.timestamps import short_error


@register
class DecordBackend(VideoBackend):
    name = "decord"

    def __init__(self, path: Path, timestamps: np.ndarray, fit: int | None = None):
        super().__init__(path, timestamps, fit)
        try:
            import decord
        except ImportError:
            raise CannotOpen("decord is not installed (pip install decord2)") from None
        try:
            log = getattr(decord, "logging", None)  # FFmpeg's messages on damaged packets: compress
            if log is not None:  # reports the frames lost itself
                log.set_level(log.WARNING if os.environ.get("VOCOCLI_DEBUG") else log.QUIET)
            self._reader = self._open(decord)
        except Exception as e:  # decord's errors on files it cannot parse have no common type
            raise CannotOpen(_message(e)) from e
        if len(self._reader) != len(timestamps):
            raise CannotOpen(f"decord counts {len(self._reader)} frames, the stream has {len(timestamps)}")
        self._error = decord.DECORDError

    def _open(self, decord):
        """decord's reader, decoding large frames at decode_size (decord scales while decoding,
        so its buffers hold small frames). Kept only if the first frame comes out with the
        video's own aspect ratio (display rotation is applied after decord's scaling)."""
        from vococli.video.timestamps import frame_size

        width, height = frame_size(self.path)
        size = decode_size(width, height, self.fit)
        if size is not None:
            scaled = decord.VideoReader(str(self.path), num_threads=0, width=size[0], height=size[1])
            h, w = scaled[0].shape[:2]
            scaled.seek(0)
            if abs(w / h - width / height) < 0.02 * width / height or abs(h / w - width / height) < 0.02 * width / height:
                return scaled
        return decord.VideoReader(str(self.path), num_threads=0)

    def read(self, frames: np.ndarray, batch_size: int) -> Iterator[FrameBatch]:
        for s in range(0, len(frames), batch_size):
            idx = frames[s:s + batch_size]
            try:
                pixels = self._reader.get_batch(idx.tolist()).asnumpy()
            except self._error as e:
                raise StreamFailed(_message(e)) from e
            yield FrameBatch(list(range(s, s + len(idx))), self.timestamps[idx].tolist(), pixels)


def _message(e: Exception) -> str:
    """decord's message without its "[time] source.cc:line: " prefix."""
    return re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", short_error(e))
