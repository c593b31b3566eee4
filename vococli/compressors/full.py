"""Every frame token visible to the text: no compression.

In the VoCo layout (`BOS | image | separator | slots`) the text sees all of them: the upper bound
training compares with (and the first stage of the curriculum from random weights). In the stock
layout (`BOS | slot x K`, compressors/pool.py) the slots are the frame's image tokens themselves,
the paper's full caching: what any checkpoint answers from without training.
"""

from __future__ import annotations

from vococli.compressors.base import Compressor


class Full(Compressor):
    name = "full"
    stock = True

    def text_visible(self, layout):
        import torch

        if layout.bos_visible:  # the stock layout: the slots (and, through the layout, the first BOS)
            return super().text_visible(layout)
        return torch.ones(layout.frame_len, dtype=torch.bool)

    def slot_embeddings(self, embeds, feats, layout, module):
        if not layout.bos_visible:
            return embeds
        import torch

        if feats.shape[1] != layout.k:
            raise ValueError(f"the full compressor keeps all {feats.shape[1]} image tokens, the layout has {layout.k} slots")
        return torch.cat([embeds[:, :layout.c0], feats.to(embeds.dtype)], dim=1)
