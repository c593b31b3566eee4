"""8-bit cache storage: the quantisation error bound, the cache round trip, answers, refusals."""

import pytest
import torch

from helpers import CLIP, SAMPLING
from vococli.answer.session import Session
from vococli.cache.chunks import load_cache, read_info
from vococli.compress.pipeline import compress_video
from vococli.errors import UserError
from vococli.cache.int8 import dequantize_int8, quantize_int8


def test_int8_error_is_at_most_half_a_step_per_vector():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 2, 4, 64, generator=g) * torch.rand(3, 5, 2, 4, 1, generator=g) * 10
    x[0, 0, 0, 0] = 0  # an all-zero vector stays zero
    q, s = quantize_int8(x)
    assert q.dtype == torch.int8 and s.shape == (3, 5, 2, 4, 1)
    err = (dequantize_int8(q, s) - x).abs()
    assert torch.all(err <= s / 2 + 1e-6)
    assert torch.equal(dequantize_int8(q, s)[0, 0, 0, 0], torch.zeros(64))
    assert torch.all(q[1:].abs().amax(-1) == 127)  # each nonzero vector uses the full range


@pytest.fixture(scope="module")
def both(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("q")
    full = compress_video(tiny_model, CLIP, tmp / "f.voco", SAMPLING, chunk_frames=8, notice=lambda s: None)
    int8 = compress_video(tiny_model, CLIP, tmp / "q.voco", SAMPLING, chunk_frames=8, cache_dtype="int8",
                          notice=lambda s: None)
    return load_cache(full.path), load_cache(int8.path), full.path, int8.path


def test_int8_cache_round_trip(both):
    full, q, full_path, q_path = both
    assert q.keys.dtype == torch.int8 and q.key_scales.shape == (*q.keys.shape[:4], 1)
    assert q.n_frames == full.n_frames == 21
    # what is stored is what quantising the full-precision cache gives (scales exactly, codes within 1)
    ref_q, ref_s = quantize_int8(full.keys)
    torch.testing.assert_close(q.key_scales, ref_s)
    assert (q.keys.int() - ref_q.int()).abs().max() <= 1
    info = read_info(q_path)
    assert info.meta.storage == "int8" and info.meta.dtype == "float32"
    assert info.bytes < 0.6 * read_info(full_path).bytes
    sel = q.select([0, 5, 20])
    assert sel.key_scales.shape[1] == 3 and torch.equal(sel.keys[:, 1], q.keys[:, 5])


def test_int8_cache_answers_like_the_full_cache(tiny_model, both):
    full, q, _, _ = both
    a, b = Session(tiny_model, full), Session(tiny_model, q)
    ids = a.prompt_ids("what is the man holding?")
    la, lb = a.prefill(ids, 4), b.prefill(ids, 4)
    assert (la - lb).abs().max() < 0.05 * la.abs().max()
    assert la.argmax() == lb.argmax()


def test_storage_is_part_of_the_job(tiny_model, both):
    _, _, full_path, _ = both
    with pytest.raises(UserError, match="different storage"):
        compress_video(tiny_model, CLIP, full_path, SAMPLING, cache_dtype="int8", notice=lambda s: None)
    with pytest.raises(UserError, match="^cache_dtype 'fp8': choose one of auto, int8$"):
        compress_video(tiny_model, CLIP, full_path.parent / "x.voco", SAMPLING, cache_dtype="fp8",
                       notice=lambda s: None)


def test_eval_keys_caches_and_runs_by_storage(tiny_model):
    from vococli.eval.record import comparable
    from vococli.eval.caches import cache_key
    from vococli.video.sampling import Sampling

    plain = cache_key(CLIP, tiny_model, Sampling())
    assert cache_key(CLIP, tiny_model, Sampling(), "auto") == plain
    assert cache_key(CLIP, tiny_model, Sampling(), "int8") != plain
    assert comparable(None, "cache_dtype") == "auto"  # records from before the option


def test_eval_cache_names_tell_a_bf16_cache_from_a_float32_one(tiny_model):
    """A CPU (float32) and a GPU (bf16) run sharing --cache-dir must not collide: compress refuses
    to resume a cache of another dtype, which would fail every question of that video."""
    from dataclasses import replace

    from vococli.eval.caches import cache_key
    from vococli.video.sampling import Sampling

    bf16 = replace(tiny_model, dtype=torch.bfloat16)
    assert cache_key(CLIP, bf16, Sampling()) != cache_key(CLIP, tiny_model, Sampling())
