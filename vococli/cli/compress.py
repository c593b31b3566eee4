"""`vococli compress` and `vococli info`: making a cache and showing what it holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vococli.cli.common import (CompressorOpt, DeviceOpt, PoolOpt, DtypeOpt, ModelOpt, ThreadsOpt, compress_progress, err, model_path, out,
                                quiet_transformers, threads_for)
from vococli.errors import UserError


def compress(
    video: Path = typer.Argument(..., help="Video file (mp4, mkv, webm, avi, mov ...) or image (jpg, png ...): "
                                 "an image makes a one-frame cache."),
    output: Optional[Path] = typer.Option(None, "--out", "-o", help="Cache folder (default: VIDEO with .voco)."),
    output_alias: Optional[Path] = typer.Option(None, "--output", hidden=True, help="The same as --out (an older "
                                                "spelling)."),
    model: Optional[str] = ModelOpt,
    fps: float = typer.Option(1.0, help="Frames sampled per second of video."),
    max_frames: Optional[int] = typer.Option(None, help="Cap on frames; spreads them evenly when exceeded."),
    start: float = typer.Option(0.0, help="Start time in seconds."),
    end: Optional[float] = typer.Option(None, help="End time in seconds (default: end of video)."),
    voco_tokens: Optional[int] = typer.Option(None, help="VoCo tokens per frame (default: the checkpoint's)."),
    compressor: Optional[str] = CompressorOpt,
    pool: Optional[int] = PoolOpt,
    batch_size: Optional[int] = typer.Option(
        None, help="Frames per forward pass (default: chosen from free GPU memory; 8 on CPU)."),
    chunk_frames: int = typer.Option(128, help="Frames per cache chunk (the unit of resuming)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing cache instead of resuming it."),
    cache_dtype: str = typer.Option("auto", help="Storage of the cached keys/values: auto (the model's dtype) "
                                    "or int8 (half the size of bf16; accuracy cost in docs/performance.md)."),
    video_backend: str = typer.Option("auto", help="Video decoder: decord, pyav, or auto (decord, then PyAV for "
                                      "what decord cannot open or read)."),
    compile: bool = typer.Option(False, "--compile", help="Run stage 1's layers through torch.compile (compiles "
                                 "on the first batch; the same keys/values up to rounding)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    threads: Optional[int] = ThreadsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Compress a video into a VoCo cache (resumes an interrupted run of the same job)."""
    if output_alias is not None:
        if output is not None and output != output_alias:
            raise UserError("--output is the older spelling of --out; give one of them")
        output = output_alias
    from vococli.threads import check_threads
    from vococli.video.sampling import Sampling

    if not video.exists():
        raise UserError(f"{video}: file not found")
    sampling = Sampling(fps=fps, start=start, end=end, max_frames=max_frames)  # checked before any loading
    check_threads(threads)
    path = model_path(model)
    from vococli.compress.pipeline import compress_video
    from vococli.families.loading import load_model

    n_threads = threads_for(threads)
    quiet_transformers()
    m = load_model(path, device=device, dtype=dtype, voco_tokens=voco_tokens, compressor=compressor, pool=pool,
                   notice=lambda s: err.print(s))
    with compress_progress() as progress:
        res = compress_video(m, video, output, sampling, batch_size=batch_size, chunk_frames=chunk_frames,
                             overwrite=overwrite, cache_dtype=cache_dtype, compile=compile, video_backend=video_backend,
                             notice=lambda s: err.print(s), progress=progress)
    if as_json:
        out.print_json(json.dumps({**res.to_dict(), "threads": n_threads}))
    elif res.computed:
        out.print(f"{res.path}: {res.frames} frames, {_kept(m)}; compressed {res.computed} frames in "
                  f"{res.seconds:.1f} s ({res.frames_per_s:.1f} frames/s, {res.backend})")
    else:
        out.print(f"{res.path}: {res.frames} frames, {_kept(m)}")


def _kept(m) -> str:
    return f"K={m.layout.k}" if m.compressor == "voco" else f"{m.compressor}: {m.layout.k} tokens per frame"


def info(
    cache: Path = typer.Argument(..., help="A .voco cache."),
    as_json: bool = typer.Option(False, "--json", help="Print the metadata as JSON."),
):
    """Show what a cache holds: frames, duration, K, model fingerprint, size."""
    from vococli.cache.chunks import read_info

    info = read_info(cache)
    if as_json:
        out.print_json(json.dumps(info.to_dict()))
        return
    meta, v, s = info.meta, info.meta.video, info.meta.sampling
    rows = [
        ("video", f"{v['name']} ({v['size']:,} bytes; {meta.video_duration_s:.2f} s from first to last frame)"),
        ("frames", f"{info.frames} of {meta.planned_frames} planned"
                   + (f", {info.last.frames_lost} lost" if info.last.frames_lost else "")
                   + ("" if info.last.final else " (unfinished)")),
        ("sampling", f"fps={s['fps']} start={s['start']} end={s['end']} max_frames={s['max_frames']}"),
        ("voco tokens" if meta.compressor == "voco" else "kept tokens",
         f"K={meta.k} per frame, first {'VoCo' if meta.compressor == 'voco' else 'kept'} position c0={meta.c0}"),
        ("model", f"{meta.model_fingerprint} ({_model_name(meta.model_path)}; {meta.family}, "
                  f"compressor {meta.compressor})"),
        ("dtype", meta.dtype if meta.storage == meta.dtype else f"{meta.dtype}, stored as {meta.storage}"),
        ("size", f"{info.bytes / 2**20:.2f} MiB in {info.chunks} chunk(s), "
                 f"{info.bytes / max(1, info.frames) / 2**10:.1f} KiB per frame"),
    ]
    for k, v in rows:
        out.print(f"[bold]{k:>12}[/bold]  {v}")


def _model_name(path: str) -> str:
    """The recorded model folder, or "the bundled default model" when it is that one."""
    import os

    from vococli.defaults import bundled_model_dir

    bundled = bundled_model_dir()
    try:
        if bundled is not None and os.path.samefile(path, os.fspath(bundled)):
            return "the bundled default model"
    except OSError:  # the folder is gone or elsewhere: show what was recorded
        pass
    return path
