"""Commands that make data and models: synth, train, tiny-model.

Each is a thin layer over its module; cli.py registers them on the `vococli` app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vococli.cli.common import DeviceOpt, err, out, progress_bar, quiet_transformers
from vococli.errors import UserError


def synth(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder to write clips and annotations into."),
    seed: int = typer.Option(0, help="Seed: the same seed writes the same annotations."),
    count: int = typer.Option(100, help="Number of clips."),
    kind: str = typer.Option("mix", help="frame, temporal, needle, long (several brief events far apart), detail (relations, "
                      "sizes and counts among 4-6 shapes) or mix."),
    size: int = typer.Option(96, help="Frame side in pixels."),
    needle_seconds: str = typer.Option("60,600,3600", help="Needle and long clip lengths in seconds (cycled)."),
    needle_depths: Optional[str] = typer.Option(None, help="Where each needle is shown, as fractions of the clip "
                                                "(0 = start, 1 = end), cycled; default: anywhere."),
    types: Optional[str] = typer.Option(None, help="Keep only these question types, comma-separated "
                                        "(e.g. shape,count); clips left without a question are skipped."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
):
    """Write a synthetic video QA set: coloured shapes with exact answers (clips, LLaVA JSON, QA JSON)."""
    from vococli.synth.clips import SynthConfig, synthesize

    try:
        lengths = tuple(int(x) for x in needle_seconds.split(","))
    except ValueError:
        raise UserError(f"--needle-seconds {needle_seconds!r}: expected comma-separated whole seconds") from None
    if not lengths or min(lengths) < 4:
        raise UserError("--needle-seconds: each length must be at least 4 seconds")
    if kind == "long" and min(lengths) < 18:
        raise UserError("--needle-seconds: long clips must be at least 18 seconds (three events and the gaps "
                        "between them)")
    depths = parse_fractions(needle_depths, "--needle-depths") if needle_depths else None
    kept = tuple(t.strip() for t in types.split(",") if t.strip()) if types else None
    cfg = SynthConfig(seed=seed, count=count, kind=kind, size=size, needle_seconds=lengths,
                      needle_depths=depths, types=kept)
    with progress_bar("synth") as bar:
        task = bar.add_task("clips", total=count, rate="")
        res = synthesize(cfg, out_dir, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        out.print_json(json.dumps(res))
    else:
        out.print(f"{res['out']}: {res['clips']} clips, {res['questions']} questions "
                  "(videos/, train.json, test_qa.json, scenes.json)")


def parse_fractions(text: str, flag: str) -> tuple[float, ...]:
    """Comma-separated numbers from 0 to 1."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated fractions from 0 to 1") from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise UserError(f"{flag} {text!r}: each depth must lie from 0 to 1")
    return values


def parse_range(text: str, flag: str) -> tuple[int, int]:
    """MIN:MAX whole numbers."""
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected MIN:MAX in frames, e.g. 18:10800") from None
    return lo, hi


def train(
    ctx: typer.Context,
    data: list[str] = typer.Option(..., "--data", "-d", help="LLaVA-format JSON, or a folder holding train.json "
                                   "(media paths are relative to the JSON's folder). Repeatable."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to write (and to --resume)."),
    media: Optional[Path] = typer.Option(None, help="Folder the media paths in --data are relative to "
                                         "(default: each JSON file's folder)."),
    init: Optional[str] = typer.Option(None, help="Start from random weights of a preset: tiny, synth-small or synth-v2."),
    from_checkpoint: Optional[str] = typer.Option(None, "--from", help="Start from this checkpoint folder "
                                                  "(a LLaVA checkpoint, or an earlier stage)."),
    mask: str = typer.Option("voco", help="voco: text sees only the VoCo tokens; causal: text sees the image "
                             "too (the upper bound, and the first stage of the curriculum)."),
    no_voco_mask: bool = typer.Option(False, "--no-voco-mask", hidden=True, help="Same as --mask causal (an older "
                                      "spelling)."),
    compressor: str = typer.Option("voco", help="voco, or avgpool: average-pool the image tokens to K + a "
                                   "linear layer in place of the VoCo tokens (baseline)."),
    voco_tokens: Optional[int] = typer.Option(None, help="VoCo tokens per frame K (default: the checkpoint's, else 2)."),
    lr: float = typer.Option(5e-4, help="Peak learning rate (AdamW; warm-up then cosine to a tenth)."),
    warmup_steps: int = typer.Option(50, help="Linear warm-up steps."),
    batch_size: int = typer.Option(64, help="Conversations per micro-batch (whole videos are taken until at "
                                   "least this many of their questions are in)."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: from --epochs)."),
    epochs: float = typer.Option(1.0, help="Passes over the data when --steps is not given."),
    freeze_vision: bool = typer.Option(False, help="Keep the vision tower's weights fixed."),
    fps: float = typer.Option(1.0, help="Frames sampled per second of training video."),
    max_frames: int = typer.Option(64, help="Most frames per training video (spread evenly)."),
    keep_frames: bool = typer.Option(True, "--keep-frames/--no-keep-frames", help="Keep decoded frames in "
                                     "memory (fp16) after their first use; turn off for data larger than RAM."),
    save_every: int = typer.Option(200, help="Write the checkpoint every N optimizer steps."),
    resume: bool = typer.Option(False, help="Continue the run saved in --out from its last step, with its "
                                "saved settings (only --steps/--epochs, --save-every, --threads, --device change)."),
    seed: int = typer.Option(0, help="Seed of the initial weights and the data order."),
    threads: Optional[int] = typer.Option(None, metavar="N", help="CPU threads to compute with (default: the CPUs "
                                          "this process may use, from its affinity mask)."),
    device: str = DeviceOpt,
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast (default: on for CUDA)."),
    long_frames: Optional[str] = typer.Option(None, metavar="MIN:MAX", help="Also train on needle/long scenes of "
                                              "MIN to MAX frames (e.g. 18:10800), assembled from frames compressed "
                                              "one by one (grey frames without gradients)."),
    long_scenes: int = typer.Option(16, help="Assembled long scenes per micro-batch (with --long-frames)."),
    long_ramp: int = typer.Option(0, help="Steps over which the longest assembled scene grows to MAX."),
    long_kinds: str = typer.Option("needle,long", help="Kinds of assembled scenes: needle, long."),
):
    """Train a VoCo model: only answers are supervised; the mask decides what the text may see.

    Curriculum that works from scratch: train with --mask causal first, then continue
    with --from that checkpoint and the VoCo mask.
    """
    from vococli.train.config import TrainConfig
    from vococli.train.loop import train as run_training

    given = given_settings(ctx)
    if {"steps", "epochs"} <= given:
        raise UserError("give --steps or --epochs, not both")
    quiet_transformers()
    if no_voco_mask:
        mask = "causal"
    long_min, long_max = parse_range(long_frames, "--long-frames") if long_frames else (18, 0)
    cfg = TrainConfig(data=tuple(data), out=str(out_dir), media=str(media) if media else None, init=init,
                      checkpoint=from_checkpoint, mask=mask, compressor=compressor, voco_tokens=voco_tokens, lr=lr, warmup_steps=warmup_steps,
                      batch_size=batch_size, grad_accum=grad_accum, steps=steps, epochs=epochs,
                      freeze_vision=freeze_vision, fps=fps, max_frames=max_frames, keep_frames=keep_frames,
                      save_every=save_every, seed=seed, threads=threads, device=None if device == "auto" else device, bf16=bf16,
                      long_min=long_min, long_max=long_max, long_scenes=long_scenes, long_ramp=long_ramp,
                      long_kinds=long_kinds)
    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeRemainingColumn(), console=err, disable=not err.is_terminal)
    log_every = max(1, save_every // 4)

    def on_step(st, total, loss, rate):
        info = f"loss {loss:.4f}  {rate:.0f} samples/s  epoch {st.epoch}"
        progress.update(task, total=total, completed=st.step, info=info)
        if not err.is_terminal and (st.step % log_every == 0 or st.step == total):
            err.print(f"step {st.step}/{total}  {info}  {st.seconds:.0f} s")

    with progress:
        task = progress.add_task("steps", total=None, info="reading data")
        st = run_training(cfg, resume=resume, on_step=on_step, notice=lambda s: err.print(s), given=given)
    out.print(f"{out_dir}: {st.step} steps, {st.samples:,} conversations in {st.seconds / 60:.1f} min; "
              f"final loss {st.losses[-1][1] if st.losses else float('nan'):.4f} (loss.png beside it)")


# train's options whose TrainConfig field has another name
TRAIN_FIELDS = {"out_dir": "out", "from_checkpoint": "checkpoint", "no_voco_mask": "mask", "long_frames": "long_max"}


def given_settings(ctx: typer.Context) -> frozenset[str]:
    """The TrainConfig fields set on the command line (not left at their defaults)."""
    typed = ("COMMANDLINE", "ENVIRONMENT")  # click's ParameterSource names (typer may bundle its own click)
    return frozenset(TRAIN_FIELDS.get(name, name) for name in ctx.params
                     if ctx.get_parameter_source(name).name in typed)


def tiny_model(
    output: Path = typer.Argument(..., help="Folder to create."),
    voco_tokens: int = typer.Option(2, help="VoCo tokens per frame stored in the config."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
):
    """Create a tiny RANDOM checkpoint (for tests and smoke runs; its answers are meaningless)."""
    from vococli.families.tiny import TinyConfig, make_tiny_checkpoint

    if voco_tokens < 1:
        raise UserError("--voco-tokens must be at least 1")
    quiet_transformers()
    if output.exists() and any(output.iterdir()):
        raise UserError(f"{output}: exists and is not empty")
    make_tiny_checkpoint(output, TinyConfig(voco_tokens=voco_tokens, seed=seed))
    out.print(f"{output}: tiny random checkpoint (K={voco_tokens}); it runs every command but does not "
              "answer meaningfully")
