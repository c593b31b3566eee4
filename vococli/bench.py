"""`vococli bench`: speed and memory of every stage, on random weights of a named architecture.

One run measures, on one device:
- the hardware ceilings: a large matrix product (TFLOP/s) and a device copy (GB/s);
- vision encoding and stage-1 compression in frames/s (stage 1 also through the general
  training-path prefill, as the baseline), each as a share of the matmul ceiling;
- end-to-end `compress` of a video file written for the run (decode + preprocess + encode + write);
- the paper's Table 7 comparison: answering from the 576 image tokens with no cache, from their
  cached keys/values, and from K VoCo tokens;
- answering over long caches (minutes of video at 1 fps): time to first token and decode tokens/s
  for the plain (dynamic cache) path and the pre-allocated + CUDA-graph path, in the model's dtype
  and in nf4, with peak memory and the decode limit that memory bandwidth implies.

Times are medians of `repeats` runs after a warm-up, taken with synchronised timers.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .answer import Session
from .arch import answering_model, random_model
from .fast_decode import StaticSession
from .layout import text_start
from .model import VocoModel
from .stage1 import compress_embeddings, frame_embeddings, image_features, prefill_frames
from .video_cache import VideoCache

SECTIONS = ("ceilings", "vision", "stage1", "compress", "table7", "long")
QUESTION = "What happens in the video after the person puts the red cup on the table, and why?"


@dataclass
class BenchConfig:
    preset: str = "tiny"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    voco_tokens: int = 2
    batch_size: int | None = None  # stage-1 frames per forward (None: automatic)
    video_frames: int = 64  # frames of the end-to-end compress video (1 fps)
    video: Path | None = None  # a video file to compress instead of writing one
    minutes: tuple[float, ...] = (1, 10, 60)
    answer_tokens: int = 64
    repeats: int = 3
    four_bit: bool = True
    compile: bool = False  # also time the torch.compile'd decode step (longest cache only)
    sections: tuple[str, ...] = SECTIONS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class PeakMemory:
    """Peak GPU bytes allocated inside the block, above what was allocated at its start."""

    def __init__(self, device: torch.device):
        self.device, self.extra = device, None  # stays None off CUDA

    def __enter__(self):
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            sync(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.start


def gib(n: float | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def module_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() in seen or t.device.type == "meta":
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
        qs = getattr(t, "quant_state", None)  # nf4 absmax and friends
        if qs is not None and getattr(qs, "absmax", None) is not None:
            total += qs.absmax.numel() * qs.absmax.element_size()
    return total


# ---------------------------------------------------------------- ceilings


def ceilings(cfg: BenchConfig) -> dict:
    dev = cfg.device
    n = 8192 if dev.type == "cuda" else 1024
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dt)
    b = torch.randn(n, n, device=dev, dtype=dt)
    t = timed(lambda: a @ b, dev, max(cfg.repeats, 5), warmup=2)
    size = (1 << 30) if dev.type == "cuda" else (1 << 28)
    src = torch.empty(size, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    tc = timed(lambda: dst.copy_(src), dev, max(cfg.repeats, 5), warmup=2)
    del a, b, src, dst
    return {"matmul_tflops": round(2 * n**3 / t / 1e12, 2), "matmul_shape": f"{n}^3 {str(dt)[6:]}",
            "copy_gb_s": round(2 * size / tc / 1e9, 1)}  # bytes read + written


# ---------------------------------------------------------------- compression


def vision_flops(model: VocoModel) -> float:
    vc = model.llava.config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2 + 1
    per_token = sum(p.numel() for p in model.llava.model.vision_tower.parameters())
    per_token += sum(p.numel() for p in model.llava.model.multi_modal_projector.parameters())
    attn = 4 * vc.num_hidden_layers * n * n * vc.hidden_size
    return 2 * per_token * n + attn


def stage1_flops(model: VocoModel) -> float:
    """What `compress_embeddings` computes per frame: every layer but the last in full (causal
    attention: half the score matrix), and the last layer's k/v projections of the K VoCo tokens."""
    tc = model.text_config
    fl, k = model.layout.frame_len, model.layout.k
    layers = model.language_model.layers
    full = sum(p.numel() for p in layers[:-1].parameters())
    last = sum(p.numel() for p in (*layers[-1].self_attn.k_proj.parameters(), *layers[-1].self_attn.v_proj.parameters()))
    attn = 2 * (tc.num_hidden_layers - 1) * fl * fl * tc.hidden_size
    return 2 * full * fl + 2 * last * k + attn


def compression(cfg: BenchConfig, model: VocoModel, matmul_tflops: float | None, batch: int) -> dict:
    dev, s = cfg.device, model.image.size
    pixels = torch.randn(batch, 3, s, s, device=dev, dtype=model.dtype)
    out: dict = {"batch": batch}
    with torch.inference_mode():
        if "vision" in cfg.sections:
            with PeakMemory(dev) as mem:
                t = timed(lambda: image_features(model, pixels), dev, cfg.repeats)
            out["vision"] = {"frames_s": round(batch / t, 1), "tflops": round(vision_flops(model) * batch / t / 1e12, 2),
                             "peak_gib": gib(mem.extra)}
        embeds = frame_embeddings(model, image_features(model, pixels))
        if "stage1" in cfg.sections:
            with PeakMemory(dev) as mem:
                t = timed(lambda: compress_embeddings(model, embeds), dev, cfg.repeats)
            zero = torch.zeros(batch, dtype=torch.long)
            with PeakMemory(dev) as mem_plain:
                t_plain = timed(lambda: prefill_frames(model, embeds, zero), dev, cfg.repeats)
            flops = stage1_flops(model) * batch / t
            out["stage1"] = {"frames_s": round(batch / t, 1), "tflops": round(flops / 1e12, 2),
                             "peak_gib": gib(mem.extra), "plain_frames_s": round(batch / t_plain, 1),
                             "plain_peak_gib": gib(mem_plain.extra), "speedup": round(t_plain / t, 2)}
    for key in ("vision", "stage1"):
        if key in out and matmul_tflops:
            out[key]["share_of_matmul"] = round(out[key]["tflops"] / matmul_tflops, 3)
    return out


def write_bench_video(path: Path, frames: int, size: tuple[int, int] = (480, 640)) -> Path:
    """A 1-fps H.264 clip of moving coloured blocks on a gradient (real decoding work, small file)."""
    import av

    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], -1).astype(np.uint8)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "23", "preset": "ultrafast"}
        for t in range(frames):
            img = base.copy()
            for _ in range(3):
                y, x = rng.integers(0, h - 64), rng.integers(0, w - 64)
                img[y:y + 64, x:x + 64] = rng.integers(0, 255, 3)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def end_to_end(cfg: BenchConfig, model: VocoModel) -> dict:
    from .compress import compress_video

    from .video import Sampling

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if cfg.video is None:
            video, what = write_bench_video(Path(tmp) / "bench.mp4", cfg.video_frames), "640x480 H.264, 1 fps"
        else:
            video, what = Path(cfg.video), Path(cfg.video).name
        written = time.perf_counter() - t0
        with PeakMemory(cfg.device) as mem:
            res = compress_video(model, video, Path(tmp) / "bench.voco", Sampling(fps=1.0),
                                 batch_size=cfg.batch_size, notice=lambda s: None)
        hour = 3600 / res.frames_per_s if res.frames_per_s else None
    return {"frames": res.frames, "seconds": round(res.seconds, 2), "frames_s": round(res.frames_per_s, 1),
            "backend": res.backend, "video": what, "video_write_s": round(written, 1),
            "hour_at_1fps_s": round(hour, 1) if hour else None, "peak_gib": gib(mem.extra)}


# ---------------------------------------------------------------- answering


def random_cache(model: VocoModel, frames: int, seed: int = 0) -> VideoCache:
    """VoCo keys/values of `frames` frames with random contents, in host memory like a loaded cache."""
    tc = model.text_config
    d = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    shape = (tc.num_hidden_layers, frames, tc.num_key_value_heads, model.layout.k, d)
    g = torch.Generator(device=model.device).manual_seed(seed)
    keys = torch.randn(shape, generator=g, device=model.device, dtype=model.dtype).cpu()
    values = torch.randn(shape, generator=g, device=model.device, dtype=model.dtype).cpu()
    return VideoCache(keys=keys, values=values, timestamps=np.arange(frames, dtype=float), meta={})


def answer_once(session: Session, ids: list[int], n_tokens: int) -> tuple[float, float]:
    """Prefill `ids` and decode exactly `n_tokens` greedy tokens (end-of-sequence ignored).
    Returns (time to first token, decode seconds for the remaining tokens)."""
    session.reset()
    dev = session.model.device
    sync(dev)
    t0 = time.perf_counter()
    logits = session._prefill(ids, n_tokens)
    token = int(logits.argmax(-1))
    t1 = time.perf_counter()
    for _ in range(n_tokens - 1):
        token = int(session._decode(token).argmax(-1))
    sync(dev)
    return t1 - t0, time.perf_counter() - t1


def measure_answering(session: Session, ids: list[int], cfg: BenchConfig) -> dict:
    answer_once(session, ids, cfg.answer_tokens)  # warm-up (captures the graph when there is one)
    runs = [answer_once(session, ids, cfg.answer_tokens) for _ in range(cfg.repeats)]
    ttft = statistics.median(r[0] for r in runs)
    decode = statistics.median(r[1] for r in runs)
    total = statistics.median(r[0] + r[1] for r in runs)
    row = {"ttft_ms": round(ttft * 1000, 2), "decode_tok_s": round((cfg.answer_tokens - 1) / decode, 1),
           "answer_ms": round(total * 1000, 1)}
    decoder = getattr(session, "decoder", None)
    if decoder is not None and decoder.graph is not None:
        # the GPU time of the captured step alone: what the decode rate would be with no host work
        session.reset()
        session._prefill(ids, cfg.answer_tokens)
        steps = min(16, session.width - session.base - session.used - 1)
        if steps > 0:
            row["graph_only_tok_s"] = round(1000 / decoder.replay_ms(steps), 1)
            session.cache.crop(-steps)
        session.reset()
    return row


def kv_bytes(model: VocoModel, tokens: int) -> int:
    tc = model.text_config
    d = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    return 2 * tc.num_hidden_layers * tc.num_key_value_heads * d * tokens * torch.finfo(model.dtype).bits // 8


def table7(cfg: BenchConfig, model: VocoModel, lm: VocoModel) -> list[dict]:
    """Answering one question from (a) the image tokens, no cache; (b) their cached keys/values;
    (c) the K VoCo tokens' cached keys/values: the first token (prefill) and a whole answer of
    `answer_tokens` tokens, on the plain path. The vision tower is not counted in any row."""
    from transformers import DynamicCache

    from .answer import forward_tokens

    dev, lay = cfg.device, model.layout
    ids = lm.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    n = cfg.answer_tokens
    s = model.image.size
    with torch.inference_mode():
        feats = image_features(model, torch.randn(1, 3, s, s, device=dev, dtype=model.dtype))
        image_embeds = frame_embeddings(model, feats)[:, : lay.c0]  # BOS, image, separator
        q_embeds = model.language_model.get_input_embeddings()(torch.tensor([ids], device=dev))

    def generate(cache, first_logits_fn, start_pos, count):
        logits = first_logits_fn()
        token, pos = int(logits.argmax(-1)), start_pos
        for _ in range(count - 1):
            logits = forward_tokens(lm, torch.tensor([[token]]), cache, pos)
            token, pos = int(logits.argmax(-1)), pos + 1

    def no_cache(count):
        cache = DynamicCache(config=lm.text_config)
        seq = torch.cat([image_embeds, q_embeds], 1)
        with torch.inference_mode():
            out = lm.lm(inputs_embeds=seq, past_key_values=cache, use_cache=True, logits_to_keep=1)
        generate(cache, lambda: out.logits[:, -1], seq.shape[1], count)

    with torch.inference_mode():
        full = DynamicCache(config=lm.text_config)
        lm.lm(inputs_embeds=image_embeds, past_key_values=full, use_cache=True, logits_to_keep=1)
        image_kv = [(layer.keys.clone(), layer.values.clone()) for layer in full.layers]

    def image_cached(count):
        cache = DynamicCache(config=lm.text_config)
        for i, (k, v) in enumerate(image_kv):
            cache.update(k, v, i)
        generate(cache, lambda: forward_tokens(lm, torch.tensor([ids]), cache, lay.c0), lay.c0 + len(ids), count)

    # the VoCo cache of one frame, on the device like the image tokens' cache of (b)
    voco_kv = list(random_cache(lm, 1).layer_states(lm))

    def voco_cached(count):
        cache = DynamicCache(config=lm.text_config)
        for i, (k, v) in enumerate(voco_kv):
            cache.update(k, v, i)
        start = text_start(lay, 1)
        generate(cache, lambda: forward_tokens(lm, torch.tensor([ids]), cache, start), start + len(ids), count)

    rows = []
    for name, tokens, fn in [("(a) baseline: image tokens, no cache", lay.c0 + len(ids), no_cache),
                             ("(b) full caching: image tokens' KV", lay.c0, image_cached),
                             (f"(c) VoCo: {lay.k} tokens' KV", lay.k, voco_cached)]:
        with PeakMemory(dev) as mem:
            first = timed(lambda: fn(1), dev, cfg.repeats)
            t = timed(lambda: fn(n), dev, cfg.repeats)
        rows.append({"method": name, "cached_tokens": 0 if fn is no_cache else tokens,
                     "cache_mib": 0.0 if fn is no_cache else round(kv_bytes(lm, tokens) / 2**20, 3),
                     "first_token_ms": round(first * 1000, 2), "answer_ms": round(t * 1000, 1),
                     "peak_gib": gib(mem.extra)})
    for r in rows:
        r["first_token_vs_baseline"] = round(r["first_token_ms"] / rows[0]["first_token_ms"], 3)
        r["vs_baseline"] = round(r["answer_ms"] / rows[0]["answer_ms"], 3)
    return rows


def long_caches(cfg: BenchConfig, models: dict[str, VocoModel], bandwidth_gb_s: float | None,
                rows: list | None = None, on_row: Callable[[], None] = lambda: None) -> list[dict]:
    """Time to first token and decode speed over caches of `cfg.minutes` of 1-fps video; rows are
    appended to `rows` as they are measured and `on_row()` is called after each."""
    rows = [] if rows is None else rows
    some = next(iter(models.values()))
    ids = some.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    paths = ["dynamic", "graph"] if cfg.device.type == "cuda" else ["dynamic", "static"]
    for minutes in cfg.minutes:
        if cfg.compile and minutes == max(cfg.minutes) and cfg.device.type == "cuda":
            paths = paths + ["compiled"]
        frames = int(round(minutes * 60))
        video = random_cache(some, frames)
        for weights, lm in models.items():
            wbytes = module_bytes(lm.lm) - module_bytes(lm.language_model.embed_tokens)
            limit = None
            if bandwidth_gb_s:
                per_token = wbytes + kv_bytes(lm, frames * lm.layout.k + len(ids) + cfg.answer_tokens)
                limit = round(bandwidth_gb_s * 1e9 / per_token, 1)
            for path in paths:
                row = {"minutes": minutes, "frames": frames, "cache_gib": gib(kv_bytes(lm, frames * lm.layout.k)),
                       "weights": weights, "path": path}
                session = None
                try:
                    with PeakMemory(cfg.device) as mem:
                        t0 = time.perf_counter()
                        if path == "dynamic":
                            session = Session(lm, video)
                        else:  # the buffer is filled at the first prompt: do that inside the load time
                            session = StaticSession(lm, video, graph=path == "graph", compile=path == "compiled",
                                                    room=len(ids) + cfg.answer_tokens + 24)
                            session._ensure_room(len(ids) + cfg.answer_tokens)
                        sync(cfg.device)
                        row["load_s"] = round(time.perf_counter() - t0, 3)
                        row.update(measure_answering(session, ids, cfg))
                        session = None
                    row["peak_gib"] = gib(None if mem.extra is None else module_bytes(lm.lm) + mem.extra)
                    if limit:
                        row["decode_limit_tok_s"] = limit
                        row["share_of_limit"] = round(row["decode_tok_s"] / limit, 3)
                except Exception as e:  # one failing configuration must not hide the others
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                finally:
                    session = None  # free its buffers before the next configuration
                if cfg.device.type == "cuda":
                    torch.cuda.empty_cache()
                rows.append(row)
                on_row()
        del video
    return rows


# ---------------------------------------------------------------- the run


def run_bench(cfg: BenchConfig, report: Callable[[str, object], None] = lambda k, v: None) -> dict:
    """Run the selected sections; `report(section, result)` is called as each one finishes."""
    from .frame_feed import auto_batch_size

    result: dict = {"preset": cfg.preset, "device": device_name(cfg.device), "dtype": str(cfg.dtype)[6:],
                    "voco_tokens": cfg.voco_tokens, "repeats": cfg.repeats, "versions": versions()}

    def section(name, fn):
        try:
            value = fn()
        except Exception as e:
            value = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
        result[name] = value
        report(name, value)
        return value

    ceil = section("ceilings", lambda: ceilings(cfg)) if "ceilings" in cfg.sections else {}
    t0 = time.perf_counter()
    model = random_model(cfg.preset, cfg.device, cfg.dtype, cfg.voco_tokens)
    result["model"] = {"build_s": round(time.perf_counter() - t0, 1), "frame_tokens": model.layout.frame_len,
                       "llm_gib": gib(module_bytes(model.language_model) + module_bytes(model.lm.lm_head)),
                       "vision_gib": gib(module_bytes(model.llava.model.vision_tower))}
    report("model", result["model"])
    batch = cfg.batch_size or auto_batch_size(model)
    if {"vision", "stage1"} & set(cfg.sections):
        section("compression", lambda: compression(cfg, model, ceil.get("matmul_tflops"), batch))
    if "compress" in cfg.sections:
        section("compress_video", lambda: end_to_end(cfg, model))
    lm = answering_model(model)
    if "table7" in cfg.sections:
        section("table7", lambda: table7(cfg, model, lm))
    if "long" in cfg.sections:
        models = {str(cfg.dtype)[6:]: lm}
        if cfg.four_bit:
            try:
                models["nf4"] = answering_model(model, load_4bit=True)
            except Exception as e:
                result["nf4_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if cfg.device.type == "cuda":  # the vision tower is not needed to answer
            model.llava.model.vision_tower.to("meta")
            torch.cuda.empty_cache()
        result["long"] = []  # filled row by row, so a run cut short keeps what it measured
        section("long", lambda: long_caches(cfg, models, ceil.get("copy_gb_s"), result["long"],
                                            lambda: report("long_row", result)))
    return result


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def versions() -> dict:
    import transformers

    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        out["bitsandbytes"] = version("bitsandbytes")
    except PackageNotFoundError:
        pass
    return out
