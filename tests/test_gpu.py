"""The same equivalences on a CUDA GPU in bf16, and the 4-bit answering path (skipped without CUDA)."""

import pytest
import torch

from helpers import one_forward_logits, pixels_for, text_ids, two_stage_logits
from vococli.answer.session import GenerationConfig, Session
from vococli.families.loading import load_model

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_two_stage_equivalence_bf16(tiny_ckpt, attn):
    model = load_model(tiny_ckpt, device="cuda", dtype="bfloat16", attn=attn)
    pixels, ids = pixels_for(model, 4, seed=1).to("cuda", torch.bfloat16), text_ids(model).cuda()
    ref = one_forward_logits(model, pixels, ids)
    got = two_stage_logits(model, pixels, ids)
    assert (ref - got).abs().max() < 5e-2 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("weights", ["nf4", "int4"])
def test_four_bit_answers_like_full_precision(tiny_ckpt, tiny_model, weights):
    from helpers import check_four_bit_against_full_precision, random_video
    from vococli.families.quantize import weights_of

    fp = load_model(tiny_ckpt, device="cuda", dtype="bfloat16", vision=False)
    q4 = load_model(tiny_ckpt, device="cuda", dtype="bfloat16", vision=False, weights=weights)
    assert weights_of(q4.lm) == weights
    check_four_bit_against_full_precision(q4, fp, random_video(tiny_model, 4))
    gen = GenerationConfig(max_new_tokens=8)
    assert Session(q4, random_video(tiny_model, 4)).ask("what is here?", gen).token_ids


def test_int4_on_gpu_holds_the_reference_weights(tiny_ckpt):
    """tinygemm (padded, tile-packed) read back Linear by Linear against weights quantised by hand."""
    from helpers import check_int4_linears

    full = load_model(tiny_ckpt, device="cuda", dtype="bfloat16", vision=False)
    q4 = load_model(tiny_ckpt, device="cuda", dtype="bfloat16", vision=False, weights="int4")
    assert check_int4_linears(q4, full) == 14


@pytest.mark.parametrize("weights", ["full", "nf4", "int4"])
def test_graph_decode_gives_the_plain_tokens(tiny_ckpt, tiny_model, weights):
    """The pre-allocated cache with a CUDA-graph decode step answers exactly like the plain path."""
    from helpers import random_video
    from vococli.answer.graph import GraphBuffer

    m = load_model(tiny_ckpt, device="cuda", dtype="bfloat16", vision=False, weights=weights)
    video = random_video(tiny_model, 6, seed=2)
    gen = GenerationConfig(max_new_tokens=24)
    plain, graph = Session(m, video), Session(m, video, buffer=GraphBuffer(m, video, room=8))
    for q in ["what is here?", "and then?"]:  # the second turn outgrows the first buffer
        a, b = plain.ask(q, gen), graph.ask(q, gen)
        assert a.token_ids == b.token_ids
    # no room reserved at the prompt: every decode step grows the buffer and captures a new graph
    plain, graph = Session(m, video), Session(m, video, buffer=GraphBuffer(m, video, room=1))
    ids = plain.prompt_ids("why?")
    torch.testing.assert_close(graph.prefill(ids), plain.prefill(ids), atol=2e-2, rtol=2e-2)
    for tok in [7, 9, 11]:
        torch.testing.assert_close(graph.decode_step(tok), plain.decode_step(tok), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("weights", ["full", "nf4", "int4"])
def test_compiled_decode_gives_the_plain_tokens_within_rounding(tiny_ckpt, tiny_model, weights):
    """--decode compiled on CUDA (torch.compile'd step inside a CUDA graph) against the plain path:
    logits within twice bf16's own rounding, the same greedy token wherever the top two are not
    tied within it (the rule in helpers.check_within_rounding)."""
    from helpers import check_within_rounding

    check_within_rounding(tiny_ckpt, tiny_model, "cuda", weights=weights)


def test_compression_fast_path_bf16(tiny_ckpt):
    from helpers import pixels_for
    from vococli.compress.stage1 import compress_embeddings, frame_embeddings, image_features, prefill_frames

    m = load_model(tiny_ckpt, device="cuda", dtype="bfloat16")
    with torch.inference_mode():
        embeds = frame_embeddings(m, image_features(m, pixels_for(m, 5, seed=3).to("cuda", torch.bfloat16)))
        keys, values = compress_embeddings(m, embeds)
        ref_k, ref_v = prefill_frames(m, embeds, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(keys, torch.stack(ref_k), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(values, torch.stack(ref_v), atol=3e-2, rtol=3e-2)


def test_compress_on_gpu_matches_cpu(tiny_ckpt, tmp_path):
    """The GPU pipeline (pinned batches, automatic batch size) stores what the CPU pipeline stores."""
    from vococli.cache.chunks import load_cache
    from vococli.compress.pipeline import compress_video
    from vococli.synth.clips import SynthConfig, synthesize

    synthesize(SynthConfig(seed=5, count=1, kind="temporal"), tmp_path / "s")
    video = next((tmp_path / "s").rglob("*.mp4"))
    gpu = load_model(tiny_ckpt, device="cuda", dtype="float32")
    cpu = load_model(tiny_ckpt, device="cpu", dtype="float32")
    compress_video(gpu, video, tmp_path / "g.voco", notice=lambda s: None)
    compress_video(cpu, video, tmp_path / "c.voco", notice=lambda s: None)
    a, b = load_cache(tmp_path / "g.voco"), load_cache(tmp_path / "c.voco")
    assert a.n_frames == b.n_frames > 0
    torch.testing.assert_close(a.keys, b.keys, atol=1e-3, rtol=1e-3)


def test_bench_runs_on_gpu():
    from vococli.bench.run import BenchConfig, run_bench

    cfg = BenchConfig(preset="tiny", device=torch.device("cuda"), dtype=torch.bfloat16, video_frames=8,
                      minutes=(0.5,), answer_tokens=8, repeats=1)
    res = run_bench(cfg)
    assert res["compression"]["stage1"]["frames_s"] > 0
    assert all("error" not in r for r in res["long"]), res["long"]
    assert {r["path"] for r in res["long"]} == {"dynamic", "graph"}



def test_stage1_never_waits_for_the_gpu(tiny_ckpt):
    """Pixels to VoCo keys/values queue GPU work without one host-device synchronisation (each
    would leave the GPU idle while the host launches the next kernels): resizing, the vision
    tower, stage 1 with its partial layer."""
    from vococli.compress.pixels import to_pixels
    from vococli.compress.stage1 import compress_pixels

    m = load_model(tiny_ckpt, device="cuda", dtype="bfloat16")
    frames = torch.randint(0, 255, (4, 48, 64, 3), dtype=torch.uint8).pin_memory()
    compress_pixels(m, to_pixels(frames, m.image, m.device, m.dtype))  # warm-up (library initialisation)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        keys, values = compress_pixels(m, to_pixels(frames, m.image, m.device, m.dtype))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert keys.shape[1] == 4 and values.is_cuda
