"""Generation settings, checked where they are made (no torch needed: the command line checks its
flags with them before anything heavy is imported)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vococli.errors import UserError


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings: greedy when temperature is 0."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise UserError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}", option="max_new_tokens")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UserError(f"temperature must be a number >= 0, got {self.temperature}", option="temperature")
        if not 0 < self.top_p <= 1:  # also refuses nan
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}", option="top_p")
