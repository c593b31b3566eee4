"""What a compressor is: which tokens of a frame answering keeps, and which attention rows make them.

Every frame runs as the stage-1 sequence `BOS | image | separator | <slot> x K` (layout.py). A
compressor decides
- `frame_allowed`: attention inside that sequence (the rows that produce the K slots);
- `text_visible`: the tokens of each frame that the text after the frames may attend to, i.e.
  whose keys/values a cache keeps;
- `slot_embeddings`: what the K slots hold before the first layer (the `<voco>` embeddings, or
  for a pooling baseline the pooled image features);
- `build_module`: weights of its own, trained beside the model and saved as `module_file`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from vococli.families.base import VocoLayout


class Compressor:
    name: str = ""
    module_file: str | None = None  # its own weights' file in a checkpoint folder, when it has any
    stock = False  # usable on any checkpoint, VoCo-trained or not, in the stock layout (compressors/pool.py)

    def frame_allowed(self, layout: VocoLayout) -> torch.Tensor:
        """Boolean (fl, fl) attention inside one frame's stage-1 sequence: plain causal by default."""
        import torch

        return torch.ones(layout.frame_len, layout.frame_len, dtype=torch.bool).tril()

    def text_visible(self, layout: VocoLayout) -> torch.Tensor:
        """Boolean (fl,): the tokens of a frame that text may attend to; by default the K slots."""
        import torch

        return torch.arange(layout.frame_len) >= layout.c0

    def plain_causal(self, layout: VocoLayout) -> bool:
        """Whether the in-frame attention is plain causal (what stage 1's fast path needs)."""
        import torch

        return torch.equal(self.frame_allowed(layout), Compressor.frame_allowed(self, layout))

    def build_module(self, hidden: int, k: int) -> torch.nn.Module | None:
        """The compressor's own trainable layer, or None when it has none."""
        return None

    def slot_embeddings(self, embeds: torch.Tensor, feats: torch.Tensor, layout: VocoLayout,
                        module: torch.nn.Module | None) -> torch.Tensor:
        """Stage-1 embeddings (F, frame_len, H) with the K slots filled; features (F, n_image, H)."""
        return embeds
