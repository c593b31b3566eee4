"""`vococli compress-many`: a set of videos into one cache folder, here or on Ray workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vococli.cli.common import (CompressorOpt, DeviceOpt, PoolOpt, DtypeOpt, ModelOpt, ThreadsOpt, err, model_path, out, progress_bar,
                                quiet_transformers, threads_for)
from vococli.errors import UserError


def compress_many(
    inputs: Path = typer.Argument(..., help="A folder of videos (searched recursively), a text file of video "
                                  "paths (one per line), or an annotation file eval reads (with --dataset, --videos)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Cache folder: one cache per video, named as eval names "
                                 "them (eval --cache-dir reuses them)."),
    model: Optional[str] = ModelOpt,
    dataset: Optional[str] = typer.Option(None, help="msvd, msrvtt or activitynet (INPUTS an annotation file)."),
    videos: Optional[Path] = typer.Option(None, help="The videos folder of an annotation file."),
    fps: float = typer.Option(1.0, help="Frames sampled per second of video."),
    max_frames: Optional[int] = typer.Option(None, help="Cap on frames per video (spread evenly)."),
    batch_size: Optional[int] = typer.Option(None, help="Frames per forward pass (default: automatic)."),
    cache_dtype: str = typer.Option("auto", help="Storage of the cached keys/values: auto or int8."),
    compressor: Optional[str] = CompressorOpt,
    pool: Optional[int] = PoolOpt,
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Compress on Ray workers: local (a Ray "
                                      "instance on this machine, loopback only), auto (the running cluster) or "
                                      "HOST:PORT; without it, one process here. Needs pip install 'vococli[ray]'."),
    workers: int = typer.Option(2, help="Ray workers, each with the model loaded (with --ray)."),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs each Ray worker takes (with --ray)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    threads: Optional[int] = ThreadsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one result per video as JSON."),
):
    """Compress many videos into one cache folder; a rerun skips the caches already finished.

    A video that cannot be read gets an error line and the others go on. With --ray, a worker
    that dies is restarted by Ray and its video redone from what it had written.
    """
    from vococli.choices import Storage, check
    from vococli.cluster.compress_many import list_inputs
    from vococli.threads import check_threads
    from vococli.video.sampling import Sampling

    check(cache_dtype, Storage, "cache_dtype")
    check_threads(threads)
    sampling = Sampling(fps=fps, max_frames=max_frames)
    if ray is not None:
        from vococli.cli.eval import check_ray

        check_ray(workers)
    files = list_inputs(inputs, dataset, videos)
    folder = model_path(model)
    n_threads = threads_for(threads)
    per_worker = threads if threads is not None else (max(1, n_threads // workers) if ray else n_threads)
    quiet_transformers()
    from vococli.cluster.compress_many import compress_many as run

    with progress_bar("compress") as bar:
        task = bar.add_task("videos", total=len(files), rate="")
        results = run(files, out_dir, folder, sampling, cache_dtype, batch_size, ray, workers, per_worker,
                      gpus_per_worker, None if device == "auto" else device, dtype, compressor, pool,
                      on_result=lambda r, done, total: bar.update(task, completed=done))
    errors = [r for r in results if "error" in r]
    if as_json:
        out.print_json(json.dumps({"out": str(out_dir), "videos": results}))
    else:
        for r in errors:
            err.print(f"error: {r['error']}", markup=False)
        made = sum(1 for r in results if r.get("frames_computed"))
        frames = sum(r.get("frames_computed", 0) for r in results)
        out.print(f"{out_dir}: {len(results) - len(errors)} caches ({made} made now, {frames} frames compressed), "
                  f"{len(errors)} errors")
    if errors and len(errors) == len(results):
        raise UserError(f"{out_dir}: no video could be compressed (the first: {errors[0]['error']})")
