"""Moving cached keys to other positions by rotating them with the model's own RoPE.

Keys are cached after RoPE and values are position-free. RoPE at position p is a rotation by
p * inv_freq, so a key computed at position p and rotated by d equals the key computed at p + d.
This holds for rope types whose frequencies do not depend on the sequence length.
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import rotate_half

from vococli.errors import UserError

SHIFTABLE_ROPE = frozenset({"default", "linear", "llama3"})


def rotate_keys(keys: torch.Tensor, shift: torch.Tensor, rotary_emb: torch.nn.Module,
                shiftable: frozenset[str] = SHIFTABLE_ROPE) -> torch.Tensor:
    """Rotate keys (..., T, H, K, D) by `shift[t]` positions per frame t (T,); computed in float32.
    Refused for a RoPE type outside `shiftable` (the family's)."""
    rope_type = getattr(rotary_emb, "rope_type", "default")
    if rope_type not in shiftable:
        raise UserError(f"RoPE type {rope_type!r} cannot shift cached keys (supported: {sorted(shiftable)})")
    probe = torch.empty(0, device=keys.device, dtype=torch.float32)
    cos, sin = rotary_emb(probe, shift.to(keys.device).view(1, -1))  # (1, T, D) each
    scale = float(getattr(rotary_emb, "attention_scaling", 1.0))
    cos = (cos[0] / scale)[:, None, None, :]  # (T, 1, 1, D)
    sin = (sin[0] / scale)[:, None, None, :]
    k = keys.float()
    return (k * cos + rotate_half(k) * sin).to(keys.dtype)
