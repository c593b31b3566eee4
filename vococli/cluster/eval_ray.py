"""`vococli eval --ray`: the questions of each video answered on Ray workers, the predictions file
written by this process alone (so every question gets exactly one line, however many workers
were killed and retried)."""

from __future__ import annotations

import time
from pathlib import Path

from vococli.eval.items import QAItem
from vococli.eval.run import EvalConfig, EvalSummary, VideoStats, run_locked
from vococli.eval.predictions import check_run_folder
from vococli.locks import lock_folder


class RayAnswering:
    """run_locked's backend: video groups spread over the workers, results as they return."""

    def __init__(self, ray, actors: list, cfg: EvalConfig, address: str):
        self.ray, self.actors, self.cfg, self.address = ray, actors, cfg, address

    def record(self, annotations: list[Path], fmt: str) -> dict:
        rec = self.ray.get(self.actors[0].record.remote(self.cfg, annotations, fmt))
        return {**rec, "workers": {"ray": self.address, "count": len(self.actors)}}

    def answer_groups(self, groups):
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        for name, rows, computed in pool.map_unordered(lambda a, g: a.answer.remote(g[0], g[1], self.cfg), groups):
            yield name, rows, VideoStats(computed)


def run_eval_ray(settings, items: list[QAItem], cfg: EvalConfig, annotations: list[Path], fmt: str, address: str,
                 workers: int, on_video=None, on_item=None, on_start=None) -> EvalSummary:
    """`settings` (cluster.workers.WorkerSettings) say what each worker loads; `on_start(actors)` is
    called once they are ready."""
    from vococli.cluster.workers import connect, start_workers

    t0 = time.perf_counter()
    check_run_folder(cfg.out, cfg.caches)
    cfg.out.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(cfg.out, "another vococli eval is writing this run folder; wait for it to finish or "
                       "choose another --out")
    try:
        ray = connect(address, workers, settings)
        actors = start_workers(ray, workers, settings)
        if on_start:
            on_start(actors)
        try:
            return run_locked(RayAnswering(ray, actors, cfg, address), items, cfg, annotations, fmt, on_video,
                              on_item, t0)
        finally:
            for a in actors:
                ray.kill(a)
    finally:
        lock.release()
