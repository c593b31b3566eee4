"""Stage 1: compress frames into the keys/values of their K VoCo tokens.

Each frame runs as `[BOS, image tokens, separator, <voco> x K]` with plain causal attention at the
canonical positions 0..frame_len-1; only the K VoCo positions' keys and values of every layer are
kept. Frames are independent, so a batch of frames is one batched forward.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .layout import additive_mask, frame_allowed, text_visible
from .model import VocoModel


def image_features(model: VocoModel, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, n_image, hidden): vision tower (layer -2, patch tokens) + projector."""
    cfg = model.llava.config
    out = model.llava.model.get_image_features(
        pixel_values=pixels,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
    )
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats


def frame_embeddings(model: VocoModel, feats: torch.Tensor) -> torch.Tensor:
    """(B, n_image, hidden) image features -> (B, frame_len, hidden) stage-1 input embeddings."""
    lay = model.layout
    embed = model.language_model.get_input_embeddings()
    dev = feats.device
    head = embed(torch.tensor([lay.bos_id], device=dev))  # (1, hidden)
    tail = embed(torch.tensor(list(lay.separator_ids) + [lay.voco_id] * lay.k, device=dev))
    b = feats.shape[0]
    return torch.cat([head.expand(b, -1, -1), feats.to(head.dtype), tail.expand(b, -1, -1)], dim=1)


def prefill_frames(model: VocoModel, embeds: torch.Tensor, shift: torch.Tensor,
                   mode: str = "voco") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Prefill frame sequences (F, frame_len, H), frame i at positions `arange(frame_len) + shift[i]`,
    with the in-frame mask of `mode`; returns per layer the keys and values (F, Hkv, m, D) of the
    m tokens text may see (the K VoCo slots for voco/avgpool, every token for causal)."""
    lay = model.layout
    n, fl, _ = embeds.shape
    dev = embeds.device
    positions = torch.arange(fl, device=dev)[None, :] + shift.to(dev)[:, None]  # (F, fl)
    mask = additive_mask(frame_allowed(lay, mode), embeds.dtype).to(dev).expand(n, 1, fl, fl)
    cache = DynamicCache(config=model.text_config)
    model.language_model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
                         past_key_values=cache, use_cache=True)
    keep = text_visible(lay, mode).to(dev)
    return [layer.keys[:, :, keep] for layer in cache.layers], [layer.values[:, :, keep] for layer in cache.layers]


@torch.inference_mode()
def compress_embeddings(model: VocoModel, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal prefill of stage-1 embeddings at the canonical offset; returns VoCo keys, values
    (L, B, Hkv, K, D)."""
    keys, values = prefill_frames(model, embeds, torch.zeros(embeds.shape[0], dtype=torch.long))
    return torch.stack(keys), torch.stack(values)


@torch.inference_mode()
def compress_pixels(model: VocoModel, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, S, S) pixel batch -> VoCo keys, values (L, B, Hkv, K, D)."""
    return compress_embeddings(model, frame_embeddings(model, image_features(model, pixels)))
