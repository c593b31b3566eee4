"""VideoCache: per-frame VoCo keys/values laid out in time, ready for stage 2.

Frames are compressed at the canonical offset; at load time frame t's keys are rotated by t*K
positions (values unchanged) and all frames are concatenated, so frame t's VoCo token j sits at
`c0 + t*K + j` and text starts at `c0 + T*K` (see layout.py). In the stock layout of the pool
and full compressors the text also sees BOS at position 0: its keys/values depend on the language
model alone, so they are computed when the cache is opened and follow the frames' (attention
does not depend on the order of the keys, only on their positions).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from transformers import DynamicCache

from vococli.cache.meta import CacheMeta
from vococli.errors import UserError
from vococli.cache.int8 import dequantize_int8
from vococli.layout import text_start
from vococli.families.base import VocoModel


@dataclass
class VideoCache:
    """VoCo keys/values of T frames at the canonical offset, with their timestamps (seconds)."""

    keys: torch.Tensor  # (L, T, Hkv, K, D)
    values: torch.Tensor  # (L, T, Hkv, K, D)
    timestamps: np.ndarray  # (T,)
    meta: CacheMeta | None = None  # what the cache file says of itself (None for caches made in memory)
    # with 8-bit storage: keys/values are int8 and these float32 scales are (L, T, Hkv, K, 1)
    key_scales: torch.Tensor | None = None
    value_scales: torch.Tensor | None = None

    @property
    def n_frames(self) -> int:
        return int(self.keys.shape[1])

    def select(self, frames) -> "VideoCache":
        """A cache holding only the given frame indices (in the order given)."""
        idx = torch.as_tensor(np.asarray(frames, dtype=np.int64))
        scales = {}
        if self.key_scales is not None:
            scales = {"key_scales": self.key_scales[:, idx], "value_scales": self.value_scales[:, idx]}
        return replace(self, keys=self.keys[:, idx], values=self.values[:, idx],
                       timestamps=self.timestamps[idx.numpy()], **scales)

    def _layer(self, i: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's keys and values on `dev`, dequantised (to float32) when stored in 8 bits."""
        k, v = self.keys[i].to(dev, non_blocking=True), self.values[i].to(dev, non_blocking=True)
        if self.key_scales is not None:
            k = dequantize_int8(k, self.key_scales[i].to(dev))
            v = dequantize_int8(v, self.value_scales[i].to(dev))
        return k, v

    def tokens(self, model: VocoModel) -> int:
        """Keys/values this cache puts before the text: T*K, plus BOS in the stock layout."""
        return self.n_frames * model.layout.k + int(model.layout.bos_visible)

    def layer_states(self, model: VocoModel):
        """Per layer, keys rotated to their temporal positions and values, as (1, Hkv, T*K, D) on the
        model's device in its dtype. One layer is rotated at a time, so the float32 work space is
        one layer's, not the whole cache's."""
        k = model.layout.k
        if self.keys.shape[3] != k:
            raise UserError(f"the cache holds {self.keys.shape[3]} VoCo tokens per frame, the model uses {k}")
        dev, dt = model.device, model.dtype
        bos = bos_states(model) if model.layout.bos_visible else None
        shift = torch.arange(self.n_frames, device=dev) * k
        n_layers, t, h, _, d = self.keys.shape
        for i in range(n_layers):
            ki, vi = self._layer(i, dev)
            ki = model.family.shift_keys(model, ki, shift)
            # (T, Hkv, K, D) -> (1, Hkv, T*K, D): frame-major along the sequence axis
            ki = ki.to(dt).permute(1, 0, 2, 3).reshape(1, h, t * k, d)
            vi = vi.to(dt).permute(1, 0, 2, 3).reshape(1, h, t * k, d)
            if bos is not None:
                ki, vi = torch.cat([ki, bos.layers[i].keys], dim=2), torch.cat([vi, bos.layers[i].values], dim=2)
            yield ki, vi

    def past_key_values(self, model: VocoModel) -> DynamicCache:
        """Rotate to temporal positions, concatenate, and wrap as a transformers cache (batch 1)."""
        cache = DynamicCache(config=model.text_config)
        for i, (ki, vi) in enumerate(self.layer_states(model)):
            cache.update(ki, vi, i)
        return cache


@torch.inference_mode()
def bos_states(model: VocoModel) -> DynamicCache:
    """BOS alone at position 0 through the answering model: the keys/values of the first frame's
    BOS (it sees nothing else), which text sees in the stock layout."""
    cache = DynamicCache(config=model.text_config)
    ids = torch.tensor([[model.layout.bos_id]], device=model.device)
    model.language_model(input_ids=ids, position_ids=torch.zeros_like(ids), cache=cache, use_cache=True)
    return cache


def positions_needed(model: VocoModel, n_frames: int, extra_tokens: int) -> int:
    """Positions used by n_frames of cache followed by `extra_tokens` of prompt and answer."""
    return text_start(model.layout, n_frames) + extra_tokens


def max_frames_that_fit(model: VocoModel, extra_tokens: int) -> int:
    lay = model.layout
    return max(0, (model.max_positions - lay.c0 - extra_tokens) // lay.k)


def fit_to_context(model: VocoModel, video: VideoCache, extra_tokens: int, subsample: bool,
                   notice=print) -> VideoCache:
    """Check the context budget; subsample frames evenly (with a notice) or fail with advice."""
    need = positions_needed(model, video.n_frames, extra_tokens)
    if need <= model.max_positions:
        return video
    fit = max_frames_that_fit(model, extra_tokens)
    if fit < 1:
        raise UserError(f"the prompt and the longest answer ({extra_tokens} tokens) alone exceed the model's "
                        f"{model.max_positions} positions; shorten the question or lower --max-new-tokens")
    if not subsample:
        raise UserError(
            f"{video.n_frames} frames x {model.layout.k} VoCo tokens + {extra_tokens} prompt/answer tokens "
            f"need {need} positions, the model has {model.max_positions}: at most {fit} frames fit. "
            f"Compress with a lower --fps or --max-frames {fit}, or pass --subsample to use {fit} evenly spaced frames")
    keep = np.linspace(0, video.n_frames - 1, fit).round().astype(np.int64)
    notice(f"note: using {fit} of {video.n_frames} frames (evenly spaced) to fit the model's "
           f"{model.max_positions} positions")
    return video.select(keep)
