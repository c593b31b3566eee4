"""Average pooling + linear (the paper's baseline): the K slots hold the image tokens averaged down
to K and passed through a linear layer; they see BOS and earlier slots, never the image tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vococli.compressors.base import Compressor


class AvgPoolCompressor(torch.nn.Module):
    """Average the image tokens down to K tokens, then a linear layer (initialised to identity)."""

    def __init__(self, hidden: int, k: int):
        super().__init__()
        self.k = k
        self.proj = torch.nn.Linear(hidden, hidden)
        torch.nn.init.eye_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(F, n_image, H) -> (F, K, H)."""
        pooled = F.adaptive_avg_pool1d(feats.transpose(1, 2), self.k).transpose(1, 2)
        return self.proj(pooled)


class AvgPool(Compressor):
    name = "avgpool"
    module_file = "voco_avgpool.safetensors"

    def frame_allowed(self, layout):
        allowed = super().frame_allowed(layout)
        allowed[layout.c0:, 1:layout.c0] = False
        return allowed

    def build_module(self, hidden: int, k: int) -> torch.nn.Module:
        return AvgPoolCompressor(hidden, k)

    def slot_embeddings(self, embeds, feats, layout, module):
        if module is None:
            raise ValueError("the avgpool compressor needs its pooling layer")
        return torch.cat([embeds[:, :layout.c0], module(feats).to(embeds.dtype)], dim=1)
