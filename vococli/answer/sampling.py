"""Choosing the next token on the device: greedy, or temperature + nucleus (top-p) sampling.

The token stays a (1, 1) tensor on the model's device, so a decode loop can feed it straight
back without reading it on the host. Sampling draws its uniforms from a seeded CPU generator up
front (one copy to the device per answer) and picks by inverse CDF over the nucleus, so a seed
gives the same answer on every device, up to rounding of the probabilities.
"""

from __future__ import annotations

import torch


class Sampler:
    """Next-token choice for one answer of at most `max_new_tokens` tokens."""

    def __init__(self, temperature: float, top_p: float, seed: int, max_new_tokens: int, device):
        self.temperature, self.top_p = temperature, top_p
        self.uniforms = None
        if temperature > 0:
            rng = torch.Generator().manual_seed(seed)
            self.uniforms = torch.rand(max_new_tokens, generator=rng).to(device, non_blocking=True)
        self.drawn = 0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The token (1, 1) chosen from next-token logits (1, V)."""
        if self.uniforms is None:
            return logits.argmax(-1, keepdim=True)
        probs = torch.softmax(logits[0].float() / self.temperature, dim=-1)
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < self.top_p  # the smallest set with mass >= top_p
        cdf = (sorted_p * keep).cumsum(0)
        u = self.uniforms[self.drawn: self.drawn + 1] * cdf[-1]
        self.drawn += 1
        pick = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[0] - 1)
        return order[pick].view(1, 1)
