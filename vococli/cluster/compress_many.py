"""`vococli compress-many`: compress a set of videos into one cache folder, in this process or on
Ray workers (cluster/workers.py).

INPUTS is a folder (its video files, recursively), a text file (one path per line, relative to
the file's folder; blank lines and `#` comments skipped) or an annotation file `eval` reads
(with `--dataset` and `--videos`). Each cache is written under the name `eval` gives it
(eval/caches.py), so `eval --cache-dir` reuses them and a rerun skips finished caches; a cache
another process is writing is waited for, as `compress` does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from vococli.errors import UserError

VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts",
                  ".jpg", ".jpeg", ".png"}  # images: one frame each


def list_inputs(inputs: Path, dataset: str | None = None, videos: Path | None = None) -> list[Path]:
    inputs = Path(inputs)
    if inputs.is_dir():
        found = sorted(p for p in inputs.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                       and not any(part.endswith(".voco") for part in p.relative_to(inputs).parts[:-1]))
        if not found:
            raise UserError(f"{inputs}: no video files in this folder")
        return found
    if not inputs.is_file():
        raise UserError(f"{inputs}: no such folder or file")
    if inputs.suffix.lower() == ".json":
        return _from_annotations(inputs, dataset, videos)
    try:
        lines = inputs.read_text().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{inputs}: not a text file of video paths (one per line)") from None
    paths = [(inputs.parent / x.strip()) for x in lines if x.strip() and not x.strip().startswith("#")]
    if not paths:
        raise UserError(f"{inputs}: lists no video")
    return paths


def _from_annotations(qa: Path, dataset: str | None, videos: Path | None) -> list[Path]:
    from vococli.eval.formats import find_video, read_questions

    if dataset is None or videos is None:
        raise UserError(f"{qa}: an annotation file needs --dataset and --videos (the folder of its videos)")
    items, _ = read_questions(dataset, qa=qa)
    names = list(dict.fromkeys(it.video for it in items if not it.problem))
    return [find_video(videos, name, dataset) for name in names]


def compress_many(videos: list[Path], out: Path, model: str, sampling, cache_dtype: str = "auto",
                  batch_size: int | None = None, ray_address: str | None = None, workers: int = 1,
                  threads: int = 1, gpus: float = 0.0, device: str | None = None, dtype: str | None = None,
                  compressor: str | None = None, pool: int | None = None, on_result: Callable[[dict, int, int], None] | None = None) -> list[dict]:
    """One result per video ({video, cache, frames_computed, seconds} or {video, error}), in the
    order the videos were given."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if ray_address is None:
        from vococli.cluster.workers import VocoWorker, WorkerSettings

        worker = VocoWorker(WorkerSettings(model, device, dtype, threads=threads, compressor=compressor, pool=pool))
        results = []
        for v in videos:
            results.append(worker.compress(str(v), str(out), sampling, cache_dtype, batch_size))
            if on_result:
                on_result(results[-1], len(results), len(videos))
        return results
    from vococli.cluster.workers import WorkerSettings, connect, start_workers

    settings = WorkerSettings(model, device, dtype, threads=threads, gpus=gpus, compressor=compressor, pool=pool)
    ray = connect(ray_address, workers, settings)
    actors = start_workers(ray, workers, settings)
    from ray.util import ActorPool

    pool = ActorPool(actors)
    by_video = {}
    jobs = pool.map_unordered(lambda a, v: a.compress.remote(str(v), str(out), sampling, cache_dtype, batch_size),
                              videos)
    for res in jobs:
        by_video[res["video"]] = res
        if on_result:
            on_result(res, len(by_video), len(videos))
    for a in actors:
        ray.kill(a)
    elapsed = time.perf_counter() - t0
    return [{**by_video[str(v)], "run_s": round(elapsed, 3)} for v in videos]
