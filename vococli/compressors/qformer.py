"""A Q-Former-style baseline (the paper's other external compressor): K learned queries
cross-attend to the frame's projected image tokens (one attention layer and an MLP, BLIP-2's
Q-Former reduced to a single block) and fill the K slots; like average pooling, the slots see
BOS and earlier slots, never the image tokens."""

from __future__ import annotations

import torch

from vococli.compressors.avgpool import AvgPool


class QFormerCompressor(torch.nn.Module):
    """(F, n_image, H) image features -> (F, K, H) query outputs."""

    def __init__(self, hidden: int, k: int, heads: int = 4):
        super().__init__()
        self.k = k
        heads = heads if hidden % heads == 0 else 1
        self.queries = torch.nn.Parameter(torch.randn(k, hidden) * hidden ** -0.5)
        self.norm_kv = torch.nn.LayerNorm(hidden)
        self.norm_q = torch.nn.LayerNorm(hidden)
        self.attn = torch.nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm_mlp = torch.nn.LayerNorm(hidden)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, 4 * hidden), torch.nn.GELU(),
                                       torch.nn.Linear(4 * hidden, hidden))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(feats)
        q = self.norm_q(self.queries).expand(feats.shape[0], -1, -1)
        x = self.queries + self.attn(q, kv, kv, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


class QFormer(AvgPool):
    name = "qformer"
    module_file = "voco_qformer.safetensors"

    def build_module(self, hidden: int, k: int) -> torch.nn.Module:
        return QFormerCompressor(hidden, k)
