"""Caches for checkpoints that never learned VoCo: each frame's projected image tokens, averaged
on their grid down to G x G (`pool`, in the spirit of SlowFast-LLaVA and PLLaVA) or all of them
(`full`, the paper's full caching).

A frame runs as `BOS | slot x K` (the stock layout, families/base.py): the K slots hold the
pooled (or all) image features in grid order, attention inside the frame is plain causal, as a
stock model reads its image tokens, and frame t's slots sit at positions `1 + t*K + j`. The text
sees the slots of every frame and the first frame's BOS. With `full` on one image the answer is
what the checkpoint's own `generate()` gives for `BOS | image | prompt` (a test checks it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vococli.compressors.base import Compressor


def pool_grid(feats: torch.Tensor, g: int) -> torch.Tensor:
    """(F, n, H) features on a square side x side grid (row-major) -> (F, g*g, H) averages."""
    n_frames, n, hidden = feats.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} image tokens are not a square grid")
    if g == side:
        return feats
    grid = feats.transpose(1, 2).reshape(n_frames, hidden, side, side)
    return F.adaptive_avg_pool2d(grid.float(), g).to(feats.dtype).reshape(n_frames, hidden, g * g).transpose(1, 2)


class Pool(Compressor):
    name = "pool"
    stock = True

    def slot_embeddings(self, embeds, feats, layout, module):
        g = math.isqrt(layout.k)
        if layout.n_image or g * g != layout.k:
            raise ValueError("the pool compressor needs the stock layout with K = G x G slots")
        return torch.cat([embeds[:, :layout.c0], pool_grid(feats, g).to(embeds.dtype)], dim=1)
