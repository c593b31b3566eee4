"""`vococli experiment table1`: does VoCo compression keep the information? (the paper's Table 1, small)

On synthetic data it controls, with one budget for every variant:

1. write the training sets (frame, temporal, short needle, shape-only and detail clips) and
   held-out sets (other seeds);
2. train a base model with the causal mask (text sees the image) through the curriculum of the
   bundled model: the shape question alone, then everything twice (`base_stages`);
3. continue from it for the same number of steps each (`STAGE_RUNS`): the upper bound (causal
   mask), VoCo with K = 1, 2, 4, 8, 9, average pooling + linear with K = 1 and 8, and the
   Q-Former-style baseline with K = 1;
4. score every model on held-out single-frame, temporal and detail questions, and the lower
   bound (the upper-bound model asked through only its VoCo tokens); short needles;
5. write `results.md` (with 95% confidence intervals), `results.json` and `retention.png`
   (train/table1_report.py) into the work folder.

Every step is skipped when its output is complete and resumed when it is partial, so the command
can be rerun after an interruption.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable


from vococli.errors import UserError
from vococli.synth.clips import SynthConfig, synthesize
from vococli.train.checkpoint import state_file


@dataclass(frozen=True)
class Table1Config:
    workdir: str
    train_frame: int = 12000  # clips (5 questions each)
    train_temporal: int = 6000  # clips (1-2 questions each)
    train_needle: int = 800  # clips (2 questions each)
    train_shape: int = 12000  # clips asking only "which shape is <colour>?" (the first base stage)
    train_detail: int = 16000  # clips (3 detail questions each)
    needle_train_seconds: tuple[int, ...] = (16, 32, 48, 64)
    eval_frame: int = 400  # 2,000 questions
    eval_temporal: int = 1000  # about 1,250 questions
    eval_detail: int = 700  # 2,100 questions
    needle_eval: tuple[tuple[int, int], ...] = ((60, 30),)  # (seconds, clips)
    preset: str = "synth-v2"
    base_stages: tuple[int, ...] = (800, 1500, 1500)  # causal steps: shape only, everything, everything again
    base_lrs: tuple[float, ...] = (5e-4, 5e-4, 3e-4)
    stage_steps: int = 1500
    stage_lr: float = 4e-4
    batch_size: int = 64
    save_every: int = 100
    base_threads: int = 2
    parallel: int = 1  # second-stage runs at once (each keeps its decoded frames in memory)
    threads_per_run: int = 2


# name -> extra `vococli train` flags of the second stage (all start from the base model)
STAGE_RUNS = {
    "upper": ["--mask", "causal", "--voco-tokens", "2"],
    "voco_k1": ["--voco-tokens", "1"],
    "voco_k2": ["--voco-tokens", "2"],
    "voco_k4": ["--voco-tokens", "4"],
    "voco_k8": ["--voco-tokens", "8"],
    "voco_k9": ["--voco-tokens", "9"],
    "avgpool_k1": ["--compressor", "avgpool", "--voco-tokens", "1"],
    "avgpool_k8": ["--compressor", "avgpool", "--voco-tokens", "8"],
    "qformer_k1": ["--compressor", "qformer", "--voco-tokens", "1"],
}
SEEDS = {"train_frame": 101, "train_temporal": 102, "train_needle": 103, "train_shape": 104, "train_detail": 106,
         "eval_frame": 201, "eval_temporal": 202, "eval_detail": 203, "needle": 300}
TRAIN_SETS = ("train_frame", "train_temporal", "train_needle", "train_shape", "train_detail")
EVAL_SETS = ("eval_frame", "eval_temporal", "eval_detail")


def data_sets(cfg: Table1Config) -> dict[str, SynthConfig]:
    sets = {
        "train_frame": SynthConfig(seed=SEEDS["train_frame"], count=cfg.train_frame, kind="frame"),
        "train_temporal": SynthConfig(seed=SEEDS["train_temporal"], count=cfg.train_temporal, kind="temporal"),
        "train_needle": SynthConfig(seed=SEEDS["train_needle"], count=cfg.train_needle, kind="needle",
                                    needle_seconds=cfg.needle_train_seconds),
        "train_shape": SynthConfig(seed=SEEDS["train_shape"], count=cfg.train_shape, kind="frame", types=("shape",)),
        "train_detail": SynthConfig(seed=SEEDS["train_detail"], count=cfg.train_detail, kind="detail"),
        "eval_frame": SynthConfig(seed=SEEDS["eval_frame"], count=cfg.eval_frame, kind="frame"),
        "eval_temporal": SynthConfig(seed=SEEDS["eval_temporal"], count=cfg.eval_temporal, kind="temporal"),
        "eval_detail": SynthConfig(seed=SEEDS["eval_detail"], count=cfg.eval_detail, kind="detail"),
    }
    for seconds, clips in cfg.needle_eval:
        sets[f"needle_{seconds}"] = SynthConfig(seed=SEEDS["needle"] + seconds, count=clips, kind="needle",
                                                needle_seconds=(seconds,))
    return sets


def make_data(cfg: Table1Config, notice: Callable[[str], None]) -> Path:
    root = Path(cfg.workdir) / "data"
    runs = Path(cfg.workdir) / "runs"
    trained = runs.is_dir() and any(state_file(d).exists() for d in runs.iterdir() if d.is_dir())
    for name, sc in data_sets(cfg).items():
        folder = root / name
        done = folder / "synth_config.json"
        if done.exists() and json.loads(done.read_text()) == _as_json(sc):
            continue
        if done.exists() and name.startswith("train") and trained:
            raise UserError(f"{cfg.workdir}: its models were trained on other {name} data "
                            f"({json.loads(done.read_text()).get('count')} clips there, {sc.count} now); "
                            "use a new --workdir, or the settings of the first run")
        notice(f"writing {name} ({sc.count} clips)")
        synthesize(sc, folder)
    return root


def _as_json(sc: SynthConfig) -> dict:
    return json.loads(json.dumps(asdict(sc)))


def _run_done(out: Path, steps: int) -> bool:
    state = state_file(out)
    return state.exists() and json.loads(state.read_text())["state"]["step"] >= steps


def train_command(cfg: Table1Config, out: Path, extra: list[str], steps: int, threads: int, lr: float,
                  sets: tuple[str, ...] = TRAIN_SETS) -> list[str]:
    data = Path(cfg.workdir) / "data"
    cmd = [sys.executable, "-m", "vococli", "train", "--out", str(out), "--steps", str(steps),
           "--batch-size", str(cfg.batch_size), "--lr", str(lr), "--save-every", str(cfg.save_every),
           "--threads", str(threads)]
    for name in sets:
        cmd += ["--data", str(data / name)]
    if state_file(out).exists():
        cmd.append("--resume")
    return cmd + extra


def run_jobs(jobs: list[tuple[str, list[str]]], parallel: int, logdir: Path, notice) -> None:
    """Run `vococli train` commands, `parallel` at a time; each logs to logdir/<name>.log."""
    logdir.mkdir(parents=True, exist_ok=True)
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < parallel:
            name, cmd = pending.pop(0)
            notice(f"training {name}: {' '.join(cmd[2:])}")
            log = open(logdir / f"{name}.log", "a")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(5)
        for job in list(running):
            name, proc, log = job
            if proc.poll() is not None:
                log.close()
                running.remove(job)
                if proc.returncode != 0:
                    for _, other, other_log in running:  # stop the rest: a rerun resumes them
                        other.terminate()
                        other.wait()
                        other_log.close()
                    raise UserError(f"training {name} failed (exit {proc.returncode}); see {logdir / name}.log, "
                                    "then rerun the same command to resume")


def base_runs(cfg: Table1Config) -> list[tuple[str, tuple[str, ...], int, float]]:
    """(run name, data sets, steps, peak rate) of each causal base stage, in order: with more than
    one stage the first asks only the shape question; the last is `base`."""
    n = len(cfg.base_stages)
    names = [f"base_{i}" for i in range(1, n)] + ["base"]
    sets = [("train_shape",) if i == 0 and n > 1 else TRAIN_SETS for i in range(n)]
    return list(zip(names, sets, cfg.base_stages, cfg.base_lrs))


def train_all(cfg: Table1Config, notice) -> Path:
    runs = Path(cfg.workdir) / "runs"
    previous = None
    for name, sets, steps, lr in base_runs(cfg):
        out = runs / name
        if not _run_done(out, steps):
            start = ["--from", str(previous)] if previous is not None else ["--init", cfg.preset]
            extra = ([] if state_file(out).exists() else start) + ["--mask", "causal", "--voco-tokens", "2"]
            run_jobs([(name, train_command(cfg, out, extra, steps, cfg.base_threads, lr, sets))], 1,
                     runs / "logs", notice)
        previous = out
    base = runs / "base"
    jobs = []
    for name, flags in STAGE_RUNS.items():
        out = runs / name
        if _run_done(out, cfg.stage_steps):
            continue
        start = [] if state_file(out).exists() else ["--from", str(base)]
        jobs.append((name, train_command(cfg, out, start + flags, cfg.stage_steps, cfg.threads_per_run,
                                         cfg.stage_lr)))
    run_jobs(jobs, cfg.parallel, runs / "logs", notice)
    return runs


def table1(cfg: Table1Config, command: str, notice: Callable[[str], None] = print) -> Path:
    from vococli.families.tiny import PRESETS

    if cfg.preset not in PRESETS:
        raise UserError(f"--preset {cfg.preset!r}: choose one of {', '.join(PRESETS)}")
    root = Path(cfg.workdir)
    root.mkdir(parents=True, exist_ok=True)
    timing = root / "timing.json"  # when the first invocation started: reruns resume, the clock does not
    if not timing.exists():
        timing.write_text(json.dumps({"started": time.time()}) + "\n")
    started = json.loads(timing.read_text())["started"]
    make_data(cfg, notice)
    train_all(cfg, notice)
    from vococli.train.table1_report import evaluate, plot_retention, write_report

    results = evaluate(cfg, notice)
    spent = (time.time() - started) / 60
    (root / "results.json").write_text(json.dumps({"config": asdict(cfg), "results": results}, indent=1) + "\n")
    plot_retention(results, root / "retention.png")
    report = root / "results.md"
    report.write_text(write_report(cfg, results, spent, command))
    return report
