"""Ray workers that each hold one loaded model: compress videos, answer an eval video's questions.

`connect` starts a local Ray instance on loopback (`local`) or joins a running cluster
(`auto`, or `ray://host:port` / `host:port`). Every worker is an actor that loads the checkpoint
once; Ray restarts a worker that dies and retries the task it was running (`RETRIES` times),
and since a cache resumes from what was written and its folder lock dies with the process, the
retried video continues where the killed one stopped. Results reach the driver only when a task
returns, so the driver writes each result exactly once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vococli.errors import UserError

RETRIES = 3  # attempts of a task after the first, on a restarted worker


def require_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray, which is not installed: pip install 'vococli[ray]'") from None
    return ray


@dataclass(frozen=True)
class WorkerSettings:
    model: str  # checkpoint folder (on every node: shared storage)
    device: str | None = None
    dtype: str | None = None
    weights: str = "full"  # answering weights (eval)
    threads: int = 1  # torch threads per worker
    gpus: float = 0.0  # GPUs per worker
    compressor: str | None = None  # load_model's (None: the checkpoint's default)
    pool: int | None = None


LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode, every address 127.0.0.1


def connect(address: str, workers: int, settings: WorkerSettings):
    """Ray, initialised: a local instance sized for the workers (loopback only), or a cluster."""
    if address == "local":  # Ray otherwise binds a local instance to the machine's network address
        os.environ.setdefault(LOOPBACK_ONLY, "0")
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address == "local":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ[LOOPBACK_ONLY] != "0"  # when ray was imported before
        ray.init(num_cpus=max(workers * settings.threads, 1), num_gpus=None if settings.gpus else 0,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"--ray {address}: cannot join the Ray cluster ({str(e).splitlines()[0]})") from None
    return ray


def start_workers(ray, n: int, settings: WorkerSettings) -> list:
    """`n` worker actors, each with its model loaded (waits until they are ready)."""
    if n < 1:
        raise UserError("--workers must be at least 1")
    cls = ray.remote(max_restarts=-1, max_task_retries=RETRIES)(VocoWorker)
    actors = [cls.options(num_cpus=settings.threads, num_gpus=settings.gpus).remote(settings) for _ in range(n)]
    ray.get([a.ready.remote() for a in actors])
    return actors


class VocoWorker:
    """One model in one process (created by Ray as an actor)."""

    def __init__(self, settings: WorkerSettings):
        from vococli.families.loading import answering_model, load_model
        from vococli.quiet import quiet_library_imports
        from vococli.threads import use_threads

        quiet_library_imports()
        use_threads(settings.threads)
        self.model = load_model(settings.model, device=settings.device, dtype=settings.dtype,
                                compressor=settings.compressor, pool=settings.pool)
        self.answerer = self.model if settings.weights == "full" else answering_model(self.model, settings.weights)

    def ready(self) -> int:
        return os.getpid()

    def compress(self, video: str, caches: str, sampling, cache_dtype: str, batch_size: int | None) -> dict:
        """The video's cache in `caches` (eval's names), made or finished when needed."""
        import time
        from pathlib import Path

        from vococli.eval.caches import compressed_cache

        t0 = time.perf_counter()
        try:
            cache, computed = compressed_cache(self.model, Path(video), Path(caches), sampling, cache_dtype, batch_size,
                                               notice=lambda s: None)
        except UserError as e:
            return {"video": video, "error": str(e)}
        return {"video": video, "cache": str(cache), "frames_computed": computed,
                "seconds": round(time.perf_counter() - t0, 3), "worker": os.getpid()}

    def record(self, cfg, annotations, fmt: str) -> dict:
        from vococli.eval.record import run_record

        return run_record(self.model, cfg, annotations, fmt, self.answerer)

    def answer(self, name: str, questions: list, cfg) -> tuple[str, list[dict], int]:
        """Every predictions.jsonl line of one video, and the frames compressed for it."""
        from vococli.eval.run import VideoStats, answer_video

        stats = VideoStats()
        rows = list(answer_video(self.model, self.answerer, name, questions, cfg, stats, lambda s: None))
        return name, rows, stats.computed
