"""Two-stage VoCo (compress, store, rotate, answer) equals one forward with the VoCo mask."""

import copy

import pytest
import torch

from vococli.families.loading import load_model
from vococli.families.rope import rotate_keys
from vococli.compress.stage1 import compress_pixels, frame_embeddings, image_features
from helpers import one_forward_logits, pixels_for, text_ids, two_stage_logits, with_layers









@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request, tiny_ckpt):
    return load_model(tiny_ckpt, device="cpu", dtype="float32", attn=request.param)




def test_image_two_stage_equals_masked_forward(model):
    pixels, ids = pixels_for(model, 1), text_ids(model)
    ref = one_forward_logits(model, pixels, ids)
    got = two_stage_logits(model, pixels, ids)
    assert (ref - got).abs().max() < 1e-4


def test_video_two_stage_equals_block_masked_forward(model):
    pixels, ids = pixels_for(model, 4, seed=1), text_ids(model)
    ref = one_forward_logits(model, pixels, ids)
    got = two_stage_logits(model, pixels, ids)
    assert (ref - got).abs().max() < 1e-4


def test_mask_hides_image_tokens_from_text(model):
    """Changing image features only through non-VoCo paths must matter: a plain causal forward
    (text sees the image) differs from the VoCo one, so the mask is really applied."""
    pixels, ids = pixels_for(model, 1), text_ids(model)
    ref = one_forward_logits(model, pixels, ids)
    embeds = frame_embeddings(model, image_features(model, pixels))
    seq = torch.cat([embeds[0:1], model.language_model.get_input_embeddings()(ids)], dim=1)
    with torch.inference_mode():
        causal = model.llava(inputs_embeds=seq).logits[0, -ids.shape[1]:].float()
    assert (ref - causal).abs().max() > 1e-3


def test_frame_order_changes_answer_logits(model):
    pixels, ids = pixels_for(model, 3, seed=2), text_ids(model)
    a = two_stage_logits(model, pixels, ids)
    b = two_stage_logits(model, pixels[[1, 0, 2]], ids)
    assert (a - b).abs().max() > 1e-4


def test_rotated_keys_equal_keys_computed_at_offset(model):
    """Keys computed at the canonical offset and rotated by d equal keys computed at +d."""
    from transformers import DynamicCache

    embeds = frame_embeddings(model, image_features(model, pixels_for(model, 1, seed=3)))
    got = {}
    for shift in (0, 37):
        cache = DynamicCache(config=model.text_config)
        pos = torch.arange(embeds.shape[1]).view(1, -1) + shift
        with torch.inference_mode():
            model.language_model(inputs_embeds=embeds, position_ids=pos, cache=cache, use_cache=True)
        got[shift] = torch.stack([layer.keys for layer in cache.layers])  # (L, 1, H, S, D)
    # got[0] is (L, 1, H, S, D): read the batch axis as one frame T=1 and the sequence as its tokens
    rotated = rotate_keys(got[0], torch.tensor([37]), model.language_model.rotary_emb)
    torch.testing.assert_close(rotated, got[37], atol=1e-5, rtol=1e-5)
    assert (got[0] - got[37]).abs().max() > 1e-3  # the shift really moves the keys


def test_compression_fast_path_equals_full_prefill(model):
    """Keys/values recomputed at the VoCo slots (no cache, last layer cut short) equal the kept
    slice of a full prefill with a key/value cache."""
    check_fast_path_equals_prefill(model, seed=4)




@pytest.mark.parametrize("n_layers", [1, 3, 5])
def test_compression_fast_path_at_any_depth(model, n_layers):
    """One layer: only the last layer's VoCo keys/values; more: layers run in full, then one run
    for the VoCo rows only, then the last."""
    check_fast_path_equals_prefill(with_layers(copy.deepcopy(model), n_layers, seed=n_layers), seed=6)


def check_fast_path_equals_prefill(model, seed: int) -> None:
    from vococli.compress.stage1 import compress_embeddings, prefill_frames

    embeds = frame_embeddings(model, image_features(model, pixels_for(model, 3, seed=seed)))
    keys, values = compress_embeddings(model, embeds)
    with torch.inference_mode():
        ref_k, ref_v = prefill_frames(model, embeds, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(keys, torch.stack(ref_k), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, torch.stack(ref_v), atol=1e-5, rtol=1e-5)


def test_compression_fast_path_uses_each_layers_own_norm_and_biases(tiny_ckpt):
    """The fast path recomputes the VoCo slots' keys/values from each layer's input: with a
    different random norm weight in every layer (the tiny model's are all 1) and with the bundled
    model (biased projections, trained norms) it must still equal the full prefill."""
    from vococli.defaults import default_model_path

    tiny = load_model(tiny_ckpt, device="cpu", dtype="float32")
    g = torch.Generator().manual_seed(7)
    for layer in tiny.language_model.layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.data = 0.5 + torch.rand(norm.weight.shape, generator=g)
    bundled = load_model(default_model_path(), device="cpu", dtype="float32")
    assert bundled.language_model.layers[0].self_attn.k_proj.bias is not None
    for m in (tiny, bundled):
        check_fast_path_equals_prefill(m, seed=5)


def test_compression_reads_nothing_back_from_the_device(model):
    """Frames to VoCo keys/values never turn a tensor value into a Python value (on a GPU each
    such read waits for all queued work and leaves the GPU idle while the host catches up)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from vococli.compress.pixels import to_pixels

    reads = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
             torch.ops.aten.nonzero.default, torch.ops.aten.item.default}

    class Reads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in reads:
                self.seen.append(func)
            return func(*args, **(kwargs or {}))

    frames = torch.randint(0, 255, (3, 40, 56, 3), dtype=torch.uint8)
    with Reads() as mode:
        keys, values = compress_pixels(model, to_pixels(frames, model.image, model.device, model.dtype))
    assert keys.shape[1] == 3 and mode.seen == []
