"""Which frames of a video to take: the sampling settings and the plan they give.

Pure arithmetic on the stream's true presentation timestamps (see `vococli.video.timestamps`),
never on index / fps, which is wrong for variable frame rate; no decoder is imported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vococli.errors import UserError


@dataclass(frozen=True)
class Sampling:
    """Which frames to take: every 1/fps seconds between start and end, at most max_frames."""

    fps: float = 1.0
    start: float = 0.0
    end: float | None = None
    max_frames: int | None = None

    def __post_init__(self):
        """Refused where they are made, so a command refuses the flag before any work."""
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not math.isfinite(self.fps) \
                or self.fps <= 0:
            raise UserError(f"fps must be a positive number, got {self.fps}", option="fps")
        for name, value in (("start", self.start), ("end", self.end)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UserError(f"{name} must be a number of seconds from the start of the video (0 or more), "
                                f"got {value}", option=name)
        if self.end is not None and self.end < self.start:
            raise UserError(f"end ({self.end}) must not come before start ({self.start})", option="end")
        if self.max_frames is not None and not (isinstance(self.max_frames, int) and self.max_frames >= 1):
            raise UserError(f"max_frames must be at least 1, got {self.max_frames}", option="max_frames")

    def to_dict(self) -> dict:
        return {"fps": self.fps, "start": self.start, "end": self.end, "max_frames": self.max_frames}


def plan_frames(timestamps: np.ndarray, sampling: Sampling) -> np.ndarray:
    """Indices of the frames to take: the frame on screen at each sampling instant.

    Instants run from max(start, first frame) every 1/fps seconds up to end (or the last frame);
    a frame shown at several instants is taken once. If more than max_frames remain, max_frames
    are spread evenly over them.
    """
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
        idx = idx[np.linspace(0, len(idx) - 1, sampling.max_frames).round().astype(np.int64)]
    return idx
