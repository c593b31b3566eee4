"""What a video backend is: one decoder library reading the frames of one file.

A backend is opened on a file with the file's true timestamps (from `stream_timestamps`, the
same whichever backend decodes) and reads the frames at given numbers in batches. It says it
cannot read a file by raising `CannotOpen` when opened, and that it can go no further by raising
`StreamFailed` while reading; either way the reader may hand over to the next backend. Decoder
packages are imported inside the backends' methods, never at module level, so that listing the
backends costs nothing and a missing decoder only rules out its own backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, TypeVar

import numpy as np


@dataclass
class FrameBatch:
    indices: list[int]  # positions in the planned frame list
    timestamps: list[float]
    frames: np.ndarray  # (B, H, W, 3) uint8 RGB


class CannotOpen(Exception):
    """This backend cannot read this file (not installed, refuses it, or counts other frames)."""


class StreamFailed(Exception):
    """The backend can decode no further in this file. The batches it has yielded stand; the
    planned frames after the last one it yielded go to the next backend, or count as lost."""


class VideoBackend(ABC):
    """Frames of one file by one decoder. Subclasses set `name` and implement `read`, and open
    the file in `__init__` (calling this one first), raising `CannotOpen` when they cannot.
    A backend that can scale while decoding decodes large frames at `decode_size(..., fit)`
    (memory then does not grow with the video's resolution); others deliver them as they are."""

    name: ClassVar[str]

    def __init__(self, path: Path, timestamps: np.ndarray, fit: int | None = None):
        self.path = path
        self.timestamps = timestamps  # seconds, one per frame, in display order
        self.fit = fit  # frames much larger than this (see decode_size) may be decoded smaller

    @abstractmethod
    def read(self, frames: np.ndarray, batch_size: int) -> Iterator[FrameBatch]:
        """Yield the frames numbered `frames` (sorted indices into `timestamps`) in that order,
        in batches of at most `batch_size`, RGB with display rotation applied. A batch's `indices`
        are positions in `frames`, its `timestamps` those of its frames. Frames that cannot be
        decoded are left out (the reader counts them as lost); raise `StreamFailed` to stop."""


LARGE = 2  # a frame whose longer side exceeds LARGE x the model's input size is large


def decode_size(width: int, height: int, fit: int | None) -> tuple[int, int] | None:
    """The size to decode a `width` x `height` frame at: None (as it is) unless its longer side
    exceeds LARGE x `fit`; then scaled, aspect kept, so that its longer side is LARGE x `fit`
    (the model's own padding and antialiased resize then take it to `fit`: decoders' scalers
    alias when they shrink by large factors, and resizing before padding shifts the borders)."""
    if not fit or max(width, height) <= LARGE * fit:
        return None
    scale = LARGE * fit / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


B = TypeVar("B", bound=type[VideoBackend])
BACKENDS: dict[str, type[VideoBackend]] = {}  # name -> class, filled by `register`


def register(cls: B) -> B:
    """Class decorator: make a backend known by its `name`."""
    name = getattr(cls, "name", "")
    if not name or name == "auto":
        raise ValueError(f"{cls.__name__} needs a `name` other than 'auto'")
    if BACKENDS.get(name, cls) is not cls:
        raise ValueError(f"a video backend named {name!r} is already registered ({BACKENDS[name].__name__})")
    BACKENDS[name] = cls
    return cls
