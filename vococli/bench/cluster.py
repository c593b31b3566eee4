"""`bench --sections ray`: compress-many in one process against Ray with 1 and 2 workers.

Writes `clips` synthetic 60-second clips, then compresses them three times into fresh cache
folders with the default model: in this process, on one Ray worker, on two (the CPU threads
split between the workers). Worker start-up (each loads the model) is timed apart from the
videos, so the per-video overhead Ray adds is the difference of the per-video times.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from vococli.threads import default_threads


def ray_scaling(clips: int = 40) -> dict:
    import ray

    from vococli.cluster.compress_many import compress_many, list_inputs
    from vococli.cluster.workers import WorkerSettings, connect, start_workers
    from vococli.defaults import default_model_path
    from vococli.synth.clips import SynthConfig, synthesize
    from vococli.video.sampling import Sampling

    cpus = default_threads()
    model = default_model_path()
    sampling = Sampling(fps=1.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "clips"
        synthesize(SynthConfig(seed=5, count=clips, kind="needle", needle_seconds=(60,)), data)
        videos = list_inputs(data)
        t0 = time.perf_counter()
        compress_many(videos, Path(tmp) / "here", model, sampling, threads=cpus)
        here = time.perf_counter() - t0
        rows.append({"how": "one process", "workers": 1, "threads_per_worker": cpus, "start_s": 0.0,
                     "videos_s": round(here, 2), "per_video_ms": round(1000 * here / clips, 1)})
        connect("local", 2, WorkerSettings(model, threads=max(1, cpus // 2)))
        try:
            for n in (1, 2):
                settings = WorkerSettings(model, threads=max(1, cpus // n))
                t0 = time.perf_counter()
                actors = start_workers(ray, n, settings)
                started = time.perf_counter() - t0
                for a in actors:
                    ray.kill(a)
                t0 = time.perf_counter()
                compress_many(videos, Path(tmp) / f"ray{n}", model, sampling, ray_address="local", workers=n,
                              threads=settings.threads)
                total = time.perf_counter() - t0 - started  # the run starts its own workers again
                rows.append({"how": "Ray", "workers": n, "threads_per_worker": settings.threads,
                             "start_s": round(started, 2), "videos_s": round(total, 2),
                             "per_video_ms": round(1000 * total / clips, 1)})
        finally:
            ray.shutdown()
    base = rows[0]["videos_s"]
    for r in rows:
        r["speed_vs_one_process"] = round(base / r["videos_s"], 2)
    return {"clips": clips, "frames_per_clip": 60, "cpus": cpus, "rows": rows,
            "ray_overhead_per_video_ms": round(rows[1]["per_video_ms"] - rows[0]["per_video_ms"], 1)}
