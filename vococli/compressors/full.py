"""Every frame token visible to the text, image tokens included: no compression, the upper bound
(and the first stage of the training curriculum from random weights)."""

from __future__ import annotations

from vococli.compressors.base import Compressor


class Full(Compressor):
    name = "full"

    def text_visible(self, layout):
        import torch

        return torch.ones(layout.frame_len, dtype=torch.bool)
