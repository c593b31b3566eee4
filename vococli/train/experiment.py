"""`vococli experiment table1`: does VoCo compression keep the information? (the paper's Table 1, small)

On synthetic data it controls, with one budget for every variant:

1. write the training sets (frame, temporal, short needle clips) and held-out sets (other seeds);
2. train a base model with the causal mask (text sees the image: the first curriculum stage);
3. continue from it for the same number of steps each: the upper bound (causal mask), VoCo with
   K = 1, 2, 8, and average pooling + linear with K = 1;
4. score every model on held-out single-frame and temporal questions, and the lower bound (the
   upper-bound model asked through only its VoCo tokens); needle accuracy against video length;
5. write `results.md` and `results.json` into the work folder.

Every step is skipped when its output is complete and resumed when it is partial, so the command
can be rerun after an interruption.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from vococli.errors import UserError
from vococli.synth.clips import SynthConfig, synthesize
from vococli.train.checkpoint import state_file


@dataclass(frozen=True)
class Table1Config:
    workdir: str
    train_frame: int = 8000  # clips (5 questions each)
    train_temporal: int = 12000  # clips (1-2 questions each)
    train_needle: int = 1500  # clips (2 questions each)
    needle_train_seconds: tuple[int, ...] = (16, 32, 48, 64)
    eval_frame: int = 200
    eval_temporal: int = 400
    needle_eval: tuple[tuple[int, int], ...] = ((60, 30), (600, 10), (3600, 4))  # (seconds, clips)
    preset: str = "synth-small"
    base_steps: int = 1500
    stage_steps: int = 500
    lr: float = 5e-4
    stage_lr: float = 5e-4
    batch_size: int = 64
    save_every: int = 100
    base_threads: int = 2
    parallel: int = 2  # second-stage runs at once
    threads_per_run: int = 1


# name -> extra `vococli train` flags of the second stage (all start from the base model)
STAGE_RUNS = {
    "voco_k2": ["--voco-tokens", "2"],
    "upper": ["--mask", "causal", "--voco-tokens", "2"],
    "voco_k1": ["--voco-tokens", "1"],
    "voco_k8": ["--voco-tokens", "8"],
    "avgpool_k1": ["--compressor", "avgpool", "--voco-tokens", "1"],
}
SEEDS = {"train_frame": 101, "train_temporal": 102, "train_needle": 103, "eval_frame": 201,
         "eval_temporal": 202, "needle": 300}


def data_sets(cfg: Table1Config) -> dict[str, SynthConfig]:
    sets = {
        "train_frame": SynthConfig(seed=SEEDS["train_frame"], count=cfg.train_frame, kind="frame"),
        "train_temporal": SynthConfig(seed=SEEDS["train_temporal"], count=cfg.train_temporal, kind="temporal"),
        "train_needle": SynthConfig(seed=SEEDS["train_needle"], count=cfg.train_needle, kind="needle",
                                    needle_seconds=cfg.needle_train_seconds),
        "eval_frame": SynthConfig(seed=SEEDS["eval_frame"], count=cfg.eval_frame, kind="frame"),
        "eval_temporal": SynthConfig(seed=SEEDS["eval_temporal"], count=cfg.eval_temporal, kind="temporal"),
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


def train_command(cfg: Table1Config, out: Path, extra: list[str], steps: int, threads: int, lr: float) -> list[str]:
    data = Path(cfg.workdir) / "data"
    cmd = [sys.executable, "-m", "vococli", "train", "--out", str(out), "--steps", str(steps),
           "--batch-size", str(cfg.batch_size), "--lr", str(lr), "--save-every", str(cfg.save_every),
           "--threads", str(threads)]
    for name in ("train_frame", "train_temporal", "train_needle"):
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


def train_all(cfg: Table1Config, notice) -> Path:
    runs = Path(cfg.workdir) / "runs"
    base = runs / "base"
    if not _run_done(base, cfg.base_steps):
        extra = ["--init", cfg.preset, "--mask", "causal", "--voco-tokens", "2"]
        run_jobs([("base", train_command(cfg, base, extra, cfg.base_steps, cfg.base_threads, cfg.lr))], 1,
                 runs / "logs", notice)
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


def evaluate(cfg: Table1Config, notice, only: set[str] | None = None) -> dict:
    """Accuracy of every model (and of the lower bound) on the held-out sets; cached in eval.json.

    `only` restricts scoring to some rows (upper, lower, voco_k1, ...), e.g. while others train."""
    import warnings

    from vococli.families.loading import load_model
    from vococli.train.qa_score import score_qa
    from vococli.train.checkpoint import load_compressor
    from vococli.cache.kv import max_frames_that_fit

    warnings.filterwarnings("ignore", category=FutureWarning)
    root = Path(cfg.workdir)
    cache_file = root / "eval.json"
    results = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    rows = {name: (name, "voco") for name in STAGE_RUNS}
    rows["upper"] = ("upper", "full")
    rows["lower"] = ("upper", "voco")
    rows["avgpool_k1"] = ("avgpool_k1", "avgpool")
    sets = ["eval_frame", "eval_temporal"] + [f"needle_{s}" for s, _ in cfg.needle_eval]
    specs = {name: _as_json(sc) for name, sc in data_sets(cfg).items()}  # what each set holds
    for row, (run, compressor) in rows.items():
        if only is not None and row not in only:
            continue
        m = load_model(root / "runs" / run, device="cpu", dtype="float32", allow_baseline=True)
        module = load_compressor(root / "runs" / run, m)
        for s in sets:
            key = f"{row}/{s}"
            data = specs[s]
            if (results.get(key, {}).get("model_fingerprint"), results.get(key, {}).get("data")) == (m.fingerprint, data):
                continue  # scored before, on these very weights and questions
            seconds = int(s.split("_")[1]) if s.startswith("needle") else 0
            fits = max_frames_that_fit(m, 64)  # room for the prompt and the answer
            cap = fits if seconds and seconds >= fits else None
            t0 = time.perf_counter()
            sc = score_qa(m, root / "data" / s, compressor=compressor, module=module, max_frames=cap,
                          videos_per_batch=1 if seconds > 100 else 16)
            results[key] = {**sc.to_dict(), "frames_cap": cap, "seconds": round(time.perf_counter() - t0, 1),
                            "model_fingerprint": m.fingerprint, "data": data}
            notice(f"{key}: {sc.accuracy:.3f} ({sc.total} questions)")
            tmp = cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1) + "\n")
            os.replace(tmp, cache_file)
    return results


LABELS = {"upper": "Upper bound (text sees all image tokens)", "voco_k1": "VoCo, K=1", "voco_k2": "VoCo, K=2",
          "voco_k8": "VoCo, K=8", "avgpool_k1": "Avg. pool + linear, K=1",
          "lower": "Lower bound (upper-bound model, VoCo tokens only)"}


def write_report(cfg: Table1Config, results: dict, minutes: float, command: str) -> str:
    def acc(row, s):
        r = results.get(f"{row}/{s}")
        return None if r is None else r["accuracy"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    def retention(row, s):
        if row in ("upper", "lower"):  # the two ends of the scale, by definition
            return "100%" if row == "upper" else "0%"
        up, lo, x = acc("upper", s), acc("lower", s), acc(row, s)
        if None in (up, lo, x) or up - lo <= 0:
            return "-"
        return f"{100 * (x - lo) / (up - lo):.1f}%"

    needles = [f"needle_{s}" for s, _ in cfg.needle_eval]
    head = ["model", "single-frame acc", "temporal acc", "retention (frame)", "retention (temporal)"]
    head += [f"needle {_length(s)}" for s, _ in cfg.needle_eval]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in LABELS:
        cells = [LABELS[row], pct(acc(row, "eval_frame")), pct(acc(row, "eval_temporal")),
                 retention(row, "eval_frame"), retention(row, "eval_temporal")]
        for s in needles:
            r = results.get(f"{row}/{s}")
            note = f" ({r['frames_cap']} frames)" if r and r.get("frames_cap") else ""
            cells.append(pct(acc(row, s)) + note)
        lines.append("| " + " | ".join(cells) + " |")
    types = [(s, t) for s in ("eval_frame", "eval_temporal")
             for t in sorted(results.get(f"upper/{s}", {}).get("by_type", {}))]
    by_type = ["| model | " + " | ".join(t for _, t in types) + " |", "|---|" + "---|" * len(types)]
    for row in LABELS:
        cells = [pct(results.get(f"{row}/{s}", {}).get("by_type", {}).get(t, {}).get("accuracy")) for s, t in types]
        by_type.append(f"| {LABELS[row]} | " + " | ".join(cells) + " |")
    n_frame = results.get("upper/eval_frame", {}).get("total", "?")
    n_temp = results.get("upper/eval_temporal", {}).get("total", "?")
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
               f"torch {torch.__version__}, no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name())
    return "\n".join([
        "| | |", "|---|---|",
        f"| command | `{command}` |",
        f"| machine | {machine} |",
        f"| wall time | {minutes:.0f} min from the first start to the report (data, training, scoring) |",
        f"| budget | base: {cfg.base_steps} steps causal; then {cfg.stage_steps} steps per variant, batch {cfg.batch_size} |",
        f"| held-out | {n_frame} single-frame and {n_temp} temporal questions (seeds {SEEDS['eval_frame']}, {SEEDS['eval_temporal']}) |",
        "", *lines, "",
        "Accuracy is greedy exact match in percent. Retention = (result - lower) / (upper - lower).",
        "", "Accuracy by question type (single-frame types, then temporal types):", "", *by_type,
    ]) + "\n"


def _length(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds >= 3600 else f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


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
    results = evaluate(cfg, notice)
    spent = (time.time() - started) / 60
    (root / "results.json").write_text(json.dumps({"config": asdict(cfg), "results": results}, indent=1) + "\n")
    report = root / "results.md"
    report.write_text(write_report(cfg, results, spent, command))
    return report
