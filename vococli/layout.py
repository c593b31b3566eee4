"""The VoCo token layout, attention mask and temporal positions: the one definition of each.

A compressed frame is the stage-1 sequence `BOS | image | separator | <voco> x K` (length
`frame_len = c0 + K`). Video training and the equivalence tests lay T such frames side by side,
followed by text:

    [frame 0 | frame 1 | ... | frame T-1 | text]

- A frame's tokens see only earlier tokens of the same frame (plain causal inside the frame).
- Text sees the VoCo tokens of every frame and earlier text: never BOS, image or separator.
  Which rows and which visible tokens are the compressor's (vococli.compressors): `full` lets
  text see every frame token (the upper bound), `avgpool` fills the K slots with pooled image
  features that never see the image.
- In the stock layout (`BOS | slot x K`, `bos_visible`: the pool and full compressors) text
  also sees the first frame's BOS, which sits at position 0.
- Frame t's tokens sit at positions `arange(frame_len) + t*K`, so its VoCo token j is at
  `c0 + t*K + j`; text starts at `c0 + T*K`. For T=1 this is the single-image VoCo layout.
"""

from __future__ import annotations

import torch

from vococli.compressors import Compressor, get_compressor
from vococli.families.base import VocoLayout


def frame_input_ids(layout: VocoLayout, image_token_id: int) -> torch.Tensor:
    """Token ids of one stage-1 frame; the image placeholders are replaced by image features."""
    ids = [layout.bos_id] + [image_token_id] * layout.n_image + list(layout.separator_ids)
    return torch.tensor(ids + [layout.voco_id] * layout.k)


def frame_allowed(layout: VocoLayout, compressor: str | Compressor = "voco") -> torch.Tensor:
    """Boolean (fl, fl) attention inside one frame's stage-1 sequence (the compressor's rows)."""
    return get_compressor(compressor).frame_allowed(layout)


def text_visible(layout: VocoLayout, compressor: str | Compressor = "voco") -> torch.Tensor:
    """Boolean (fl,): the tokens of each frame that text may attend to (the compressor's)."""
    return get_compressor(compressor).text_visible(layout)


def voco_allowed(layout: VocoLayout, n_frames: int, text_len: int,
                 compressor: str | Compressor = "voco") -> torch.Tensor:
    """Boolean (S, S) matrix, True where query row i may attend to key column j."""
    fl = layout.frame_len
    n_vis = n_frames * fl
    size = n_vis + text_len
    causal = torch.ones(size, size, dtype=torch.bool).tril()
    frame_of = torch.arange(n_vis) // fl
    allowed = torch.zeros(size, size, dtype=torch.bool)
    same_frame = frame_of[:, None] == frame_of[None, :]  # block diagonal
    inside = frame_allowed(layout, compressor).repeat(n_frames, n_frames)
    allowed[:n_vis, :n_vis] = same_frame & inside
    allowed[n_vis:, :n_vis] = text_visible(layout, compressor).repeat(n_frames)[None, :]
    if layout.bos_visible and n_frames:  # the stock layout: text also sees the first frame's BOS
        allowed[n_vis:, 0] = True
    allowed[n_vis:, n_vis:] = True
    return allowed & causal


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(Q, KV) or (B, Q, KV) boolean -> (1 or B, 1, Q, KV) float mask of 0 / most-negative."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    batch = allowed.shape[0] if allowed.dim() == 3 else 1
    return mask.view(batch, 1, *allowed.shape[-2:])


def voco_mask(layout: VocoLayout, n_frames: int, text_len: int, dtype: torch.dtype,
              compressor: str | Compressor = "voco") -> torch.Tensor:
    """The 4D float attention mask for `n_frames` frames followed by `text_len` text tokens."""
    return additive_mask(voco_allowed(layout, n_frames, text_len, compressor), dtype)


def voco_positions(layout: VocoLayout, n_frames: int, text_len: int) -> torch.Tensor:
    """(S,) position ids of the temporal layout (frame tokens shifted by t*K, then text)."""
    fl, k = layout.frame_len, layout.k
    frames = (torch.arange(fl)[None, :] + k * torch.arange(n_frames)[:, None]).reshape(-1)
    return torch.cat([frames, text_start(layout, n_frames) + torch.arange(text_len)])


def text_start(layout: VocoLayout, n_frames: int) -> int:
    """Position of the first text token after `n_frames` concatenated frames."""
    return layout.c0 + n_frames * layout.k


def decode_mask(past_len: int, new_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Mask for new tokens appended after a cache that holds only visible (VoCo/text) keys."""
    allowed = torch.ones(new_len, past_len + new_len, dtype=torch.bool).tril(diagonal=past_len)
    return additive_mask(allowed, dtype)
