"""`vococli experiment table1` (train/experiment.py) and `vococli experiment needle` (eval/needle.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from vococli.cli.common import ModelOpt, ThreadsOpt, err, model_path, out, progress_bar, quiet_transformers, threads_for
from vococli.cli.training import parse_fractions
from vococli.errors import UserError


def experiment_needle(
    workdir: Path = typer.Option(..., "--workdir", "-w", help="Folder for the needle sets, caches, answers and "
                                 "the report (a rerun resumes)."),
    model: Optional[str] = ModelOpt,
    lengths: str = typer.Option("60,600,1800,3600,10800", help="Video lengths in seconds (1 frame per second)."),
    depths: str = typer.Option("0,0.25,0.5,0.75,1", help="Needle depths: fractions of the video before the needle."),
    clips: int = typer.Option(4, help="Needle clips per length and depth (two questions each)."),
    long_clips: int = typer.Option(0, help="Also this many long temporal clips per length (which came first, how "
                                   "many times, colour at the start and end)."),
    seed: int = typer.Option(7000, help="Seed of the sets (length L uses seed + L): keep it away from training seeds."),
    threads: Optional[int] = ThreadsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Needle in a video haystack: accuracy over video length x needle depth, as a heat map.

    Writes needle clips with `synth`, compresses each once, asks which shape and colour appeared
    (with each answer's evidence), and writes needle.png, needle.md and needle.json into the work
    folder. Also reports per length: compress time, cache size and time to first token.
    """
    from vococli.eval.needle import NeedleConfig

    try:
        secs = tuple(int(x) for x in lengths.split(","))
    except ValueError:
        raise UserError(f"--lengths {lengths!r}: expected comma-separated whole seconds") from None
    cfg = NeedleConfig(workdir=str(workdir), lengths=secs, depths=parse_fractions(depths, "--depths"), clips=clips,
                       long_clips=long_clips, seed=seed)
    cfg.check()
    folder = model_path(model)
    threads_for(threads)
    quiet_transformers()
    from vococli.eval.heatmap import write_report
    from vococli.eval.needle import ANSWERS, run_needle

    with progress_bar("needle") as bar:
        tasks: dict[str, int] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total, rate="")
            bar.update(tasks[what], completed=done, total=total)

        answers = run_needle(cfg, folder, progress=progress, notice=lambda s: err.print(s))
    rows = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
    wanted = {f"needle-{x}" for x in secs} | ({f"long-{x}" for x in secs} if long_clips else set())
    rows = [r for r in rows if r["set"] in wanted]
    title = f"needle in a video haystack: {Path(folder or 'the bundled model').name}"
    summary = write_report(workdir, rows, title)
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        out.print((workdir / "needle.md").read_text(), markup=False)
        out.print(f"{workdir}: needle.png, needle.md, needle.json, {ANSWERS}")


def experiment_table1(
    workdir: Path = typer.Option(..., "--workdir", "-w", help="Folder for data, runs, scores and results.md."),
    base_stages: str = typer.Option("800,1500,1500", help="Causal steps of the base stages: the shape question "
                                    "alone, then everything (the bundled model's curriculum); one number: one stage."),
    stage_steps: int = typer.Option(1500, help="Steps of each variant, all continuing from the base."),
    train_frame: int = typer.Option(12000, help="Single-frame training clips (5 questions each)."),
    train_temporal: int = typer.Option(6000, help="Temporal training clips."),
    train_needle: int = typer.Option(800, help="Short needle training clips (16-64 s)."),
    train_shape: int = typer.Option(12000, help="Shape-question training clips (the first base stage)."),
    train_detail: int = typer.Option(16000, help="Detail training clips (3 questions each)."),
    eval_frame: int = typer.Option(400, help="Held-out single-frame clips (5 questions each)."),
    eval_temporal: int = typer.Option(1000, help="Held-out temporal clips."),
    eval_detail: int = typer.Option(700, help="Held-out detail clips (3 questions each)."),
    needle_clips: str = typer.Option("60:30", help="Needle eval sets as seconds:clips."),
    parallel: int = typer.Option(1, help="Variants trained at once."),
    threads_per_run: int = typer.Option(2, help="CPU threads of each variant's training."),
    preset: str = typer.Option("synth-v2", help="Architecture of the base model (a `train --init` preset)."),
):
    """Our Table 1: the upper bound, VoCo K=1/2/4/8/9, avg-pool K=1/8 and a Q-Former K=1 on one budget
    from one causal base; scored with the lower bound on single-frame, temporal and detail questions.

    Writes results.md (the table with 95% intervals, the command, the time, the machine) and
    retention.png. Rerunning the same command skips finished steps and resumes interrupted ones.
    """
    from vococli.train.experiment import Table1Config, table1

    quiet_transformers()
    try:
        needles = tuple((int(a), int(b)) for a, b in (x.split(":") for x in needle_clips.split(","))) if needle_clips else ()
        stages = tuple(int(x) for x in base_stages.split(","))
    except ValueError:
        raise UserError(f"--needle-clips {needle_clips!r} / --base-stages {base_stages!r}: expected seconds:clips,... "
                        "and comma-separated steps") from None
    if min(eval_frame, eval_temporal, eval_detail) < 1 or not 1 <= len(stages) <= 3 or min(stages) < 1:
        raise UserError("--eval-frame, --eval-temporal and --eval-detail must be at least 1; --base-stages takes "
                        "one to three step counts of at least 1")
    lrs = {1: (5e-4,), 2: (5e-4, 3e-4), 3: (5e-4, 5e-4, 3e-4)}[len(stages)]
    cfg = Table1Config(workdir=str(workdir), base_stages=stages, base_lrs=lrs, stage_steps=stage_steps,
                       train_frame=train_frame, train_temporal=train_temporal, train_needle=train_needle,
                       train_shape=train_shape, train_detail=train_detail, eval_frame=eval_frame,
                       eval_temporal=eval_temporal, eval_detail=eval_detail, needle_eval=needles,
                       parallel=parallel, threads_per_run=threads_per_run, preset=preset)
    command = "vococli " + " ".join(sys.argv[1:])
    report = table1(cfg, command, notice=lambda s: err.print(s))
    out.print(report.read_text(), markup=False)
