"""Stage 1: compress frames into the keys/values of their K VoCo tokens.

Each frame runs as `[BOS, image tokens, separator, <voco> x K]` with plain causal attention at the
canonical positions 0..frame_len-1; only the K VoCo positions' keys and values of every layer are
kept. Frames are independent, so a batch of frames is one batched forward. `prefill_frames` is
the general (and differentiable) form used in training; `compress_embeddings` computes only
what compression keeps.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import rotate_half

from vococli.compiling import allow_recompiles
from vococli.compressors import Compressor, get_compressor
from vococli.layout import additive_mask, frame_allowed, text_visible
from vococli.families.base import VocoModel


def image_features(model: VocoModel, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, n_image, hidden): the family's vision tower and projector."""
    return model.family.image_features(model, pixels)


def frame_embeddings(model: VocoModel, feats: torch.Tensor) -> torch.Tensor:
    """(B, n_image, hidden) image features -> (B, frame_len, hidden) stage-1 input embeddings."""
    lay = model.layout
    embed = model.language_model.get_input_embeddings()
    dev = feats.device
    # non_blocking: a plain copy from host memory would wait for all queued GPU work
    head = embed(torch.tensor([lay.bos_id]).to(dev, non_blocking=True))  # (1, hidden)
    tail = embed(torch.tensor(list(lay.separator_ids) + [lay.voco_id] * lay.k).to(dev, non_blocking=True))
    b = feats.shape[0]
    image = [feats.to(head.dtype)] if lay.n_image else []  # the stock layout's slots take the features
    return torch.cat([head.expand(b, -1, -1), *image, tail.expand(b, -1, -1)], dim=1)


def prefill_frames(model: VocoModel, embeds: torch.Tensor, shift: torch.Tensor,
                   compressor: str | Compressor = "voco") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Prefill frame sequences (F, frame_len, H), frame i at positions `arange(frame_len) + shift[i]`,
    with the compressor's in-frame mask; returns per layer the keys and values (F, Hkv, m, D) of
    the m tokens text may see (the K slots for voco/avgpool, every token for full)."""
    lay = model.layout
    n, fl, _ = embeds.shape
    dev = embeds.device
    positions = torch.arange(fl, device=dev)[None, :] + shift.to(dev)[:, None]  # (F, fl)
    mask = additive_mask(frame_allowed(lay, compressor), embeds.dtype).to(dev).expand(n, 1, fl, fl)
    cache = DynamicCache(config=model.text_config)
    model.language_model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
                         cache=cache, use_cache=True)
    keep = text_visible(lay, compressor).to(dev)
    return [layer.keys[:, :, keep] for layer in cache.layers], [layer.values[:, :, keep] for layer in cache.layers]


def _supports_projection_capture(model: VocoModel) -> bool:
    """The fast path recomputes keys/values from each layer's input with its input norm and k/v
    projections (a capability the family declares) and relies on the in-frame mask being plain
    causal."""
    return model.family.stage1_fast_path and get_compressor("voco").plain_causal(model.layout)


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on (B, H, T, D) with cos/sin (B, T, D)."""
    return t * cos[:, None] + rotate_half(t) * sin[:, None]


def _voco_rows(model: VocoModel, layer, hidden: torch.Tensor, positions: torch.Tensor, rope) -> torch.Tensor:
    """The output of decoder `layer` at the K VoCo slots alone, given its full input (B, fl, H)
    and the rotary (cos, sin) of every position.

    The layer itself runs on the K VoCo tokens, with the keys/values of the tokens before them
    (its input norm, k/v projections and RoPE on those tokens) handed to it as a cache, and the
    VoCo rows of the in-frame mask. The image tokens' queries, attention output and MLP, which
    only feed the next layer's image tokens, are never computed."""
    lay = model.layout
    attn = layer.self_attn
    n, fl, _ = hidden.shape
    c0 = lay.c0
    cos, sin = rope
    x = layer.input_layernorm(hidden[:, :c0])
    keys = _rotate(attn.k_proj(x).view(n, c0, -1, attn.head_dim).transpose(1, 2), cos[:, :c0], sin[:, :c0])
    values = attn.v_proj(x).view(n, c0, -1, attn.head_dim).transpose(1, 2)
    cache = DynamicCache(config=model.text_config)
    cache.update(keys, values, attn.layer_idx)
    mask = additive_mask(frame_allowed(lay, "voco")[c0:], hidden.dtype).to(hidden.device, non_blocking=True)
    return layer(hidden[:, c0:], attention_mask=mask, position_ids=positions[:, c0:], cache=cache,
                 use_cache=True, position_embeddings=(cos[:, c0:], sin[:, c0:]))


@torch.inference_mode()
def compress_embeddings(model: VocoModel, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal prefill of stage-1 embeddings at the canonical offset; returns VoCo keys, values
    (L, B, Hkv, K, D).

    Only what is kept is computed and stored. No key/value cache is built: each layer's input is
    read at the K VoCo tokens and their keys/values are recomputed from it (norm, k/v projections,
    RoPE on the keys; 2 of ~580 tokens per frame). Work whose result is discarded is skipped: the
    last layer runs only that (its attention and MLP feed nothing that is kept), the layer before
    it runs only for the K VoCo rows (its image tokens' outputs would feed only the last layer's
    image tokens), and neither the final norm nor the LM head runs. Nothing is read back from the
    GPU, so the host queues the next work while the GPU computes. A test checks this equals
    `prefill_frames`.
    """
    if not _supports_projection_capture(model):
        keys, values = prefill_frames(model, embeds, torch.zeros(embeds.shape[0], dtype=torch.long))
        return torch.stack(keys), torch.stack(values)
    lay = model.layout
    lm = model.language_model
    n, fl, _ = embeds.shape
    keep = slice(lay.c0, fl)  # the K VoCo slots
    positions = torch.arange(fl, device=embeds.device)[None, :].expand(n, fl)
    # The layers run here, one after the other, as the decoder's forward would run them, with the
    # mask transformers makes for a causal sequence: None for SDPA (its causal kernels, no mask in
    # memory). The decoder's own forward is not used because it checks the position ids for
    # packed sequences by reading a value back from the GPU.
    mask = create_causal_mask(config=lm.config, inputs_embeds=embeds, attention_mask=None, cache=None)
    rope = lm.rotary_emb(embeds, positions)
    layers = lm.layers[: model.text_config.num_hidden_layers]
    full = max(0, len(layers) - 2)  # layers run in full; then one for the VoCo rows, then the last
    inputs: list[torch.Tensor] = []  # each layer's input at the K slots
    hidden = embeds
    for layer in layers[:full]:
        inputs.append(hidden[:, keep].clone())  # a copy: the full activations are freed
        hidden = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=rope)
    inputs.append(hidden[:, keep])
    if len(layers) > 1:
        inputs.append(_voco_rows(model, layers[-2], hidden, positions, rope))
    # a layer's keys/values at the K slots: its input norm and k/v projections on those tokens
    # alone (both act token by token, so this is what the layer itself computed there)
    normed = [layer.input_layernorm(h) for layer, h in zip(layers, inputs)]
    raw_k = [layer.self_attn.k_proj(x) for layer, x in zip(layers, normed)]
    raw_v = [layer.self_attn.v_proj(x) for layer, x in zip(layers, normed)]
    head_dim = layers[-1].self_attn.head_dim
    cos, sin = rope[0][:, keep], rope[1][:, keep]  # (B, K, D), in the embeddings' dtype

    def heads(t):  # (B, K, Hkv*D) -> (B, Hkv, K, D)
        return t.view(n, lay.k, -1, head_dim).transpose(1, 2)

    keys = torch.stack([_rotate(heads(k), cos, sin) for k in raw_k])
    values = torch.stack([heads(v) for v in raw_v])
    return keys, values


@torch.inference_mode()
def compress_pixels(model: VocoModel, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, S, S) pixel batch -> kept keys, values (L, B, Hkv, K, D) of the model's compressor."""
    feats = image_features(model, pixels)
    embeds = frame_embeddings(model, feats)
    if model.compressor != "voco":  # pool / full: the slots hold the image features
        embeds = get_compressor(model.compressor).slot_embeddings(embeds, feats, model.layout, None)
    return compress_embeddings(model, embeds)


# batch sizes one process may compile stage 1 for (a run has its batch size, a smaller last batch
# and one per out-of-memory halving; a library caller compressing many videos has more last batches)
COMPILED_BATCH_SIZES = 64


def supports_compiled_layers(model: VocoModel) -> bool:
    """Only the fast path keeps the layers free of per-layer state (the general prefill passes
    each layer its own cache), so that one compiled graph serves every layer."""
    return _supports_projection_capture(model)


@contextmanager
def compiled_layers(model: VocoModel):
    """Within the block, every decoder layer but the last two (the ones stage 1 runs in full)
    runs through torch.compile, which fuses its norms, rotary and activation passes. The VoCo
    slots are read outside the layers, so one compiled graph serves every layer."""
    layers = model.language_model.layers[: model.text_config.num_hidden_layers][:-2]
    allow_recompiles(COMPILED_BATCH_SIZES)  # one graph per batch size, shared by all layers
    before = [vars(layer).get("forward") for layer in layers]  # a forward set on the instance (hooks)
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=False)
    try:
        yield
    finally:
        for layer, forward in zip(layers, before):
            if forward is None:
                del layer.forward  # back to the class's forward
            else:
                layer.forward = forward
