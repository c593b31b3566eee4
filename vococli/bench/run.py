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
  and with 4-bit weights (nf4, int4), with peak memory and the decode limit that memory bandwidth implies.

Times are medians of `repeats` runs after a warm-up, taken with synchronised timers
(bench_timing.py); the answering sections are in bench_answer.py.
"""

from __future__ import annotations

import tempfile
import importlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch._dynamo

from vococli.families.loading import answering_model
from vococli.families.presets import random_model
from vococli.bench.answer import long_caches, table7
from vococli.bench.timing import BenchConfig, PeakMemory, gib, module_bytes, sync, timed
from vococli.families.base import VocoModel
from vococli.compress.stage1 import compiled_layers, compress_embeddings, frame_embeddings, image_features, prefill_frames


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
    per_token = sum(p.numel() for p in model.family.vision_tower(model).parameters())
    per_token += sum(p.numel() for p in model.llava.model.multi_modal_projector.parameters())
    attn = 4 * vc.num_hidden_layers * n * n * vc.hidden_size
    return 2 * per_token * n + attn


def stage1_flops(model: VocoModel) -> float:
    """What `compress_embeddings` computes per frame: every layer but the last two in full (causal
    attention: half the score matrix); in the layer before the last, the k/v projections of every
    token and the rest for the K VoCo rows alone; in the last, the K VoCo tokens' k/v projections."""
    h = model.text_config.hidden_size
    fl, k = model.layout.frame_len, model.layout.k
    layers = model.language_model.layers[: model.text_config.num_hidden_layers]

    def params(modules) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    def kv(layer) -> int:
        return params([layer.self_attn.k_proj, layer.self_attn.v_proj])

    flops = 2 * kv(layers[-1]) * k
    if len(layers) > 1:
        full = layers[:-2]
        flops += 2 * params(full) * fl + 2 * len(full) * fl * fl * h
        partial = layers[-2]
        flops += 2 * kv(partial) * fl + 2 * (params([partial]) - kv(partial)) * k + 4 * k * fl * h
    return flops


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
            if cfg.compile:
                out["stage1"].update(compiled_stage1(cfg, model, embeds, t))
    for key in ("vision", "stage1"):
        if key in out and matmul_tflops:
            out[key]["share_of_matmul"] = round(out[key]["tflops"] / matmul_tflops, 3)
    return out


def compiled_stage1(cfg: BenchConfig, model: VocoModel, embeds: torch.Tensor, t_fast: float) -> dict:
    """Stage 1 with its full layers compiled: frames/s, the ratio to the fast path timed just
    before, and the largest difference of its keys/values from the fast path's."""
    dev, batch = cfg.device, embeds.shape[0]
    keys, values = compress_embeddings(model, embeds)
    with compiled_layers(model):
        sync(dev)
        t0 = time.perf_counter()
        ck, cv = compress_embeddings(model, embeds)  # compiles
        sync(dev)
        compile_s = time.perf_counter() - t0
        t = timed(lambda: compress_embeddings(model, embeds), dev, cfg.repeats)
    diff = max((ck - keys).abs().max().item(), (cv - values).abs().max().item())
    return {"compiled_frames_s": round(batch / t, 1), "compiled_speedup": round(t_fast / t, 3),
            "compiled_max_diff": diff, "compile_s": round(compile_s, 1)}


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


def decode_only(video: Path, batch: int, pin: bool) -> dict:
    """Decoding a video's 1-fps frames as `compress` does (background thread, pinned batches on
    CUDA), with no model: the rate compress cannot exceed whatever the GPU does."""
    from vococli.video.feed import Prefetcher, frames_tensor
    from vococli.video.reader import VideoReader
    from vococli.video.sampling import Sampling, plan_frames

    t0 = time.perf_counter()
    reader = VideoReader(video)
    plan = plan_frames(reader.timestamps, Sampling(fps=1.0))
    frames = 0
    with Prefetcher(reader.read(plan, batch), lambda b: frames_tensor(b.frames, pin)) as batches:
        for t in batches:
            frames += t.shape[0]
    seconds = time.perf_counter() - t0
    return {"decode_frames_s": round(frames / seconds, 1) if seconds > 0 else None, "decode_s": round(seconds, 2)}


def end_to_end(cfg: BenchConfig, model: VocoModel) -> dict:
    """`compress` of a video file (and, for comparison, decoding it alone); with `cfg.compile` a
    second time with stage 1 compiled."""
    from vococli.compress.pipeline import CHUNK_FRAMES, compress_video
    from vococli.video.feed import auto_batch_size
    from vococli.video.sampling import Sampling

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if cfg.video is None:
            video, what = write_bench_video(Path(tmp) / "bench.mp4", cfg.video_frames), "640x480 H.264, 1 fps"
        else:
            video, what = Path(cfg.video), Path(cfg.video).name
        written = time.perf_counter() - t0
        batch = min(cfg.batch_size or auto_batch_size(model), CHUNK_FRAMES)  # as compress reads them
        decoding = decode_only(video, batch, cfg.device.type == "cuda")
        runs = {}
        for compiled in (False, True) if cfg.compile else (False,):
            if compiled:
                torch._dynamo.reset()  # so that the time includes compiling, as a fresh process's would
            with PeakMemory(cfg.device) as mem:
                res = compress_video(model, video, Path(tmp) / f"bench{int(compiled)}.voco", Sampling(fps=1.0),
                                     batch_size=cfg.batch_size, notice=lambda s: None, compile=compiled)
            runs[compiled] = (res, mem.extra)
    res, peak = runs[False]
    hour = 3600 / res.frames_per_s if res.frames_per_s else None
    out = {"frames": res.frames, "seconds": round(res.seconds, 2), "frames_s": round(res.frames_per_s, 1),
           "backend": res.backend, "video": what, "video_write_s": round(written, 1),
           "hour_at_1fps_s": round(hour, 1) if hour else None, "peak_gib": gib(peak),
           "decode_wait_s": round(res.decode_wait_s, 2), **decoding}
    if True in runs:  # the compiled run includes its compilation
        res_c, _ = runs[True]
        out.update({"compiled_seconds": round(res_c.seconds, 2), "compiled_frames_s": round(res_c.frames_per_s, 1),
                    "compiled_speedup": round(res.seconds / res_c.seconds, 3) if res_c.seconds else None})
    return out


# ---------------------------------------------------------------- the run


def run_bench(cfg: BenchConfig, report: Callable[[str, object], None] = lambda k, v: None) -> dict:
    """Run the selected sections; `report(section, result)` is called as each one finishes."""
    from vococli.video.feed import auto_batch_size

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
    model_free = {"startup": ("vococli.bench.startup", "startup_times", (cfg.repeats,)),
                  "serve": ("vococli.bench.serving", "serve_load", ()),
                  "evidence": ("vococli.bench.evidence", "evidence_overhead", (cfg,)),
                  "ray": ("vococli.bench.cluster", "ray_scaling", ())}  # the default model, not the preset
    for name, (module, fn, args) in model_free.items():
        if name in cfg.sections:
            section(name, lambda: getattr(importlib.import_module(module), fn)(*args))
    if not set(cfg.sections) - {"ceilings", *model_free}:  # no section that needs a preset model
        return result
    t0 = time.perf_counter()
    model = random_model(cfg.preset, cfg.device, cfg.dtype, cfg.voco_tokens)
    result["model"] = {"build_s": round(time.perf_counter() - t0, 1), "frame_tokens": model.layout.frame_len,
                       "llm_gib": gib(module_bytes(model.language_model) + module_bytes(model.lm.lm_head)),
                       "vision_gib": gib(module_bytes(model.family.vision_tower(model)))}
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
        for weights in cfg.quantized:
            try:
                models[weights] = answering_model(model, weights)
            except Exception as e:
                result[f"{weights}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if cfg.device.type == "cuda":  # the vision tower is not needed to answer
            model.family.vision_tower(model).to("meta")
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
    for name in ("bitsandbytes", "torchao"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
