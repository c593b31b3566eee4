"""`vococli bench` on CPU, and the frame feed it relies on (prefetching, out-of-memory back-off)."""

import json

import pytest
import torch
from vococli.bench.run import BenchConfig, run_bench
from vococli.bench.answer import kv_bytes
from helpers import run
from helpers import with_layers
from vococli.errors import UserError
from vococli.video.feed import Backoff, Prefetcher, auto_batch_size


@pytest.fixture(scope="module")
def bench_result():
    cfg = BenchConfig(preset="tiny", video_frames=6, minutes=(0.2, 0.5), answer_tokens=6, repeats=1)
    return run_bench(cfg)


def test_bench_measures_every_section(bench_result):
    r = bench_result
    assert r["ceilings"]["matmul_tflops"] > 0 and r["ceilings"]["copy_gb_s"] > 0
    assert r["compression"]["vision"]["frames_s"] > 0 and r["compression"]["stage1"]["frames_s"] > 0
    c = r["compress_video"]
    assert c["frames"] == 6 and c["frames_s"] > 0
    # decoding alone is timed too, and compress's wait for frames is part of its time
    assert c["decode_frames_s"] > 0 and 0 <= c["decode_wait_s"] <= c["seconds"]
    rows = r["long"]
    assert [(x["minutes"], x["weights"], x["path"]) for x in rows] == [
        (m, w, p) for m in (0.2, 0.5) for w in ("float32", "nf4", "int4") for p in ("dynamic", "static")]
    assert all("error" not in x and x["ttft_ms"] > 0 and x["decode_tok_s"] > 0 for x in rows), rows
    assert rows[0]["frames"] == 12 and rows[-1]["frames"] == 30


def test_table7_cache_sizes_follow_the_token_counts(bench_result):
    a, b, c = bench_result["table7"]
    assert a["cache_mib"] == 0 and a["vs_baseline"] == 1.0
    # the tiny model: 16 image tokens + BOS + separator cached in (b), K=2 VoCo tokens in (c)
    assert (b["cached_tokens"], c["cached_tokens"]) == (18, 2)
    assert b["cache_mib"] / c["cache_mib"] == pytest.approx(9, rel=0.05)


def test_bench_compile_times_the_compiled_paths_and_restores_the_model():
    """--compile adds stage 1 with compiled layers (same keys/values), the end-to-end compress with
    them, and the compiled decode path on the longest cache; afterwards the layers run their own
    forward again."""
    cfg = BenchConfig(preset="tiny", sections=("stage1", "compress", "long"), minutes=(0.1, 0.2), answer_tokens=4,
                      repeats=1, compile=True, quantized=(), video_frames=4)
    r = run_bench(cfg)
    s = r["compression"]["stage1"]
    assert s["compiled_frames_s"] > 0 and s["compiled_max_diff"] < 1e-5
    c = r["compress_video"]
    assert c["frames"] == 4 and c["compiled_frames_s"] > 0 and c["compiled_speedup"] > 0
    assert [(x["minutes"], x["path"]) for x in r["long"]] == [
        (0.1, "dynamic"), (0.1, "static"), (0.2, "dynamic"), (0.2, "static"), (0.2, "compiled")]
    assert all("error" not in x for x in r["long"]), r["long"]


def test_one_compiled_graph_serves_every_stage1_layer():
    """dynamo recompiles a function at most 8 times (its default limit) and then runs it uncompiled:
    stage 1 must not make each layer a new graph, or a 32-layer model would run 23 layers
    uncompiled. Here 12 layers, one graph, the fast path's keys/values."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from vococli.families.presets import random_model
    from vococli.compress.stage1 import compiled_layers, compress_embeddings, frame_embeddings, image_features

    m = with_layers(random_model("tiny", "cpu", torch.float32, 2), 12)
    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        embeds = frame_embeddings(m, image_features(m, torch.randn(3, 3, m.image.size, m.image.size)))
        keys, values = compress_embeddings(m, embeds)
        with compiled_layers(m):
            ck, cv = compress_embeddings(m, embeds)
    assert counters["stats"]["unique_graphs"] - graphs == 1
    torch.testing.assert_close((ck, cv), (keys, values), atol=1e-5, rtol=1e-5)


def test_compiled_layers_are_undone():
    """Only the layers stage 1 runs in full (all but the last two) are compiled, and only inside
    the block."""
    from vococli.families.presets import random_model
    from vococli.compress.stage1 import compiled_layers

    m = with_layers(random_model("tiny", "cpu", torch.float32, 2), 4)
    layers = m.language_model.layers
    with compiled_layers(m):
        assert ["forward" in vars(layer) for layer in layers] == [True, True, False, False]
    assert all("forward" not in vars(layer) for layer in layers)


def test_module_bytes_counts_what_4bit_weights_hold(tiny_model):
    """int4 (a torchao tensor subclass) holds packed nibbles plus a scale and a zero per group."""
    from vococli.families.loading import answering_model
    from vococli.bench.timing import module_bytes
    from vococli.families.quantize import int4_group_size

    layers = tiny_model.language_model.layers
    full = module_bytes(layers)
    q4 = module_bytes(answering_model(tiny_model, "int4").language_model.layers)
    linear_weights = sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))
    groups = sum(m.weight.numel() // int4_group_size(m.in_features) for m in layers.modules() if isinstance(m, torch.nn.Linear))
    norms = full - 4 * linear_weights
    scale_and_zero = 2 * tiny_model.dtype.itemsize  # per group, in the model's dtype
    assert q4 - norms == pytest.approx(linear_weights / 2 + groups * scale_and_zero, rel=0.01)


def test_a_preset_too_large_for_free_memory_is_refused_before_it_is_built(monkeypatch):
    import vococli.families.presets as arch

    need = arch.weights_bytes(arch.preset_config("tiny")[1], torch.float32)
    monkeypatch.setattr(arch, "free_bytes", lambda device: need - 1)
    with pytest.raises(UserError, match="--preset tiny: its weights alone take"):
        arch.random_model("tiny", torch.device("cpu"), torch.float32)
    monkeypatch.setattr(arch, "free_bytes", lambda device: need)
    assert arch.random_model("tiny", torch.device("cpu"), torch.float32).llava is not None


def test_kv_bytes():
    class M:  # a 7B-shaped model in bf16: 1 MiB per frame at K=2
        text_config = type("C", (), {"num_hidden_layers": 32, "num_key_value_heads": 32, "hidden_size": 4096,
                                     "num_attention_heads": 32, "head_dim": 128})()
        dtype = torch.bfloat16
    assert kv_bytes(M, 2) == 2**20


def test_bench_cli_json_and_bad_flags():
    res = run("bench", "--sections", "table7", "--answer-tokens", "3", "--repeats", "1", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [row["cached_tokens"] for row in data["table7"]][1:] == [18, 2]
    for args, word in [(["--sections", "vision,nope"], "nope"), (["--minutes", "1,x"], "--minutes"),
                       (["--preset", "gpt-9"], "--preset"), (["--weights", "nf4,fp8"], "--weights"),
                       (["--no-4bit", "--weights", "nf4"], "--no-4bit"), (["--video", "README.md"], "README.md")]:
        bad = run("bench", *args)
        assert bad.returncode == 1 and word in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_prefetcher_keeps_order_and_passes_errors_on():
    assert list(Prefetcher(range(50), lambda x: x * 2, depth=2)) == [2 * i for i in range(50)]

    def broken():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in Prefetcher(broken()):
            got.append(x)
    assert got == [1]


def test_prefetcher_counts_the_time_spent_waiting_for_the_source():
    import time

    def slow():
        for i in range(5):
            time.sleep(0.05)
            yield i

    slow_source = Prefetcher(slow())
    assert list(slow_source) == list(range(5)) and slow_source.waited >= 0.2
    fast_source = Prefetcher(range(5))
    for _ in fast_source:
        time.sleep(0.05)  # the consumer is the slow side: items are ready when asked for
    assert fast_source.waited < 0.1


def test_backoff_halves_on_out_of_memory_without_losing_frames():
    calls = []

    def fn(piece):
        calls.append(piece.shape[0])
        if piece.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return piece * 10

    notes = []
    backoff = Backoff(8, notice=notes.append)
    out = backoff(fn, torch.arange(11))
    assert torch.equal(torch.cat(out), torch.arange(11) * 10)
    assert backoff.batch_size == 2 and calls[:3] == [8, 4, 2] and len(notes) == 2
    with pytest.raises(ValueError, match="not memory"):
        Backoff(4)(lambda p: (_ for _ in ()).throw(ValueError("not memory")), torch.arange(3))


def test_auto_batch_size_on_cpu(tiny_model):
    assert auto_batch_size(tiny_model) == 8
