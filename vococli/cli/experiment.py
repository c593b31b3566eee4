"""`vococli experiment needle`: the needle-in-a-video-haystack heat map (eval/needle.py)."""

from __future__ import annotations

import json
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
