"""8-bit storage of cached keys/values: symmetric int8 with one float32 scale per head vector.

Each (layer, frame, head, token) vector of `head_dim` numbers is stored as int8 values `q` and a
scale `s = max|x| / 127`, and read back as `q * s`: the error of every number is at most `s / 2`.
Keys are quantised after RoPE, as they are cached; they are dequantised before being rotated to
their temporal positions.
"""

from __future__ import annotations

import torch

from vococli.choices import Storage, check, options

STORAGES = options(Storage)  # auto: the model's dtype


def check_storage(cache_dtype: str) -> str:
    return check(cache_dtype, Storage, "cache_dtype")


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., D) -> (int8 (..., D), float32 scales (..., 1))."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True) / 127.0
    q = torch.where(scale > 0, xf / scale.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(xf))
    return q.round().clamp(-127, 127).to(torch.int8), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale.float()).to(dtype)
