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
    the file in `__init__` (calling this one first), raising `CannotOpen` when they cannot."""

    name: ClassVar[str]

    def __init__(self, path: Path, timestamps: np.ndarray):
        self.path = path
        self.timestamps = timestamps  # seconds, one per frame, in display order

    @abstractmethod
    def read(self, frames: np.ndarray, batch_size: int) -> Iterator[FrameBatch]:
        """Yield the frames numbered `frames` (sorted indices into `timestamps`) in that order,
        in batches of at most `batch_size`, RGB with display rotation applied. A batch's `indices`
        are positions in `frames`, its `timestamps` those of its frames. Frames that cannot be
        decoded are left out (the reader counts them as lost); raise `StreamFailed` to stop."""


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
