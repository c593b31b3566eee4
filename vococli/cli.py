"""The `vococli` command line: a thin layer over the Python API.

Exit codes: 0 ok, 1 user error (bad file, bad flag), 2 internal error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Answer questions about long videos from compact VoCo caches.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ModelOpt = typer.Option(None, "--model", "-m", help="Checkpoint folder (or hub id when online).")
DeviceOpt = typer.Option("auto", help="cpu, cuda, cuda:1 ... (auto: GPU when present).")
DtypeOpt = typer.Option("auto", help="float32, bfloat16 or float16 (auto: bf16 on GPU, fp32 on CPU).")


def _quiet_transformers() -> None:
    import warnings

    import transformers

    # transformers >= 5.24 renames the cache argument; both spellings work until 5.40 (pinned below it)
    warnings.filterwarnings("ignore", message=r".*past_key_values.*deprecated", category=FutureWarning)

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _model_path(model: Optional[str]) -> str:
    if model:
        return model
    from .defaults import default_model_path

    return default_model_path()


def _progress(label: str) -> Progress:
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err, transient=False,
                    disable=not err.is_terminal)


@app.command()
def compress(
    video: Path = typer.Argument(..., help="Video file (mp4, mkv, webm, avi, mov ...)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Cache folder (default: VIDEO with .voco)."),
    model: Optional[str] = ModelOpt,
    fps: float = typer.Option(1.0, help="Frames sampled per second of video."),
    max_frames: Optional[int] = typer.Option(None, help="Cap on frames; spreads them evenly when exceeded."),
    start: float = typer.Option(0.0, help="Start time in seconds."),
    end: Optional[float] = typer.Option(None, help="End time in seconds (default: end of video)."),
    voco_tokens: Optional[int] = typer.Option(None, help="VoCo tokens per frame (default: the checkpoint's)."),
    batch_size: int = typer.Option(8, help="Frames per forward pass."),
    chunk_frames: int = typer.Option(128, help="Frames per cache chunk (the unit of resuming)."),
    overwrite: bool = typer.Option(False, help="Replace an existing cache instead of resuming it."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Compress a video into a VoCo cache (resumes an interrupted run of the same job)."""
    from .compress import compress_video
    from .model import load_model
    from .video import Sampling

    _quiet_transformers()
    if not video.exists():
        raise UserError(f"{video}: file not found")
    m = load_model(_model_path(model), device=device, dtype=dtype, voco_tokens=voco_tokens)
    sampling = Sampling(fps=fps, start=start, end=end, max_frames=max_frames)
    with _progress("compress") as bar:
        task = bar.add_task("frames", total=None, rate="")
        clock = {}

        def on_progress(done: int, total: int) -> None:
            import time

            now = time.perf_counter()
            clock.setdefault("t0", now)
            clock.setdefault("d0", done)
            dt = now - clock["t0"]
            rate = f"{(done - clock['d0']) / dt:.1f} frames/s" if dt > 0 else ""
            bar.update(task, total=total, completed=done, rate=rate)

        res = compress_video(m, video, output, sampling, batch_size=batch_size, chunk_frames=chunk_frames,
                             overwrite=overwrite, progress=on_progress, notice=lambda s: err.print(s))
    if as_json:
        out.print_json(json.dumps(res.to_dict()))
    else:
        out.print(f"{res.path}: {res.frames} frames, K={m.layout.k}; compressed {res.computed} frames in "
                  f"{res.seconds:.1f} s ({res.frames_per_s:.1f} frames/s, {res.backend})")


def _gen_config(max_new_tokens: int, temperature: float, top_p: float, seed: int):
    from .answer import GenerationConfig

    if max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise UserError("--temperature must be >= 0 and --top-p in (0, 1]")
    return GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)


def _load_for_answering(cache: Path, model, device, dtype, load_4bit, subsample, reserve):
    """Load the answering model and the cache, fitted to the context; `reserve(model)` is the
    number of positions the prompt and the answer need after the frames."""
    from .cache_file import load_cache, read_info
    from .model import load_model
    from .video_cache import fit_to_context

    _quiet_transformers()
    info = read_info(cache)  # validates the cache before the model is loaded
    m = load_model(_model_path(model), device=device, dtype=dtype, vision=False, load_4bit=load_4bit,
                   voco_tokens=info["k"])
    video = load_cache(cache, fingerprint=m.fingerprint)
    return m, fit_to_context(m, video, reserve(m), subsample, notice=lambda s: err.print(s))


@app.command()
def ask(
    cache: Path = typer.Argument(..., help="A .voco cache made by `vococli compress`."),
    question: Optional[str] = typer.Argument(None, help="The question."),
    questions: list[str] = typer.Option([], "--question", "-q", help="More questions (repeatable), one cache load."),
    model: Optional[str] = ModelOpt,
    max_new_tokens: int = typer.Option(128, help="Longest answer in tokens."),
    temperature: float = typer.Option(0.0, help="0 = greedy; > 0 samples."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (with --temperature)."),
    seed: int = typer.Option(0, help="Seed for sampling."),
    stream: bool = typer.Option(False, help="Print answer tokens as they are generated."),
    load_4bit: bool = typer.Option(False, "--load-4bit", help="Load the language model in 4-bit nf4 (bitsandbytes)."),
    subsample: bool = typer.Option(False, help="Use evenly spaced frames when the cache exceeds the context."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    as_json: bool = typer.Option(False, "--json", help="Print answers and timings as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print time to first token and tokens/s."),
):
    """Answer questions about a compressed video."""
    from .answer import Session

    qs = ([question] if question else []) + list(questions)
    if not qs:
        raise UserError("give a question (ask CACHE \"question\" or -q \"question\")")
    gen = _gen_config(max_new_tokens, temperature, top_p, seed)
    from .answer import prompt_length

    m, video = _load_for_answering(cache, model, device, dtype, load_4bit, subsample,
                                   lambda m: max(prompt_length(m, q) for q in qs) + max_new_tokens)
    session = Session(m, video)
    results = []
    for q in qs:
        session.reset()
        if len(qs) > 1 and not as_json:
            out.print(f"[bold]Q:[/bold] {q}")
        if stream and not as_json:
            ans = session.ask(q, gen, on_text=lambda s: (sys.stdout.write(s), sys.stdout.flush()))
            sys.stdout.write("\n")
        else:
            ans = session.ask(q, gen)
            if not as_json:
                sys.stdout.write(ans.text + "\n")
        if verbose and not as_json:
            err.print(f"[dim]{ans.prompt_tokens} prompt tokens, {len(ans.token_ids)} answer tokens; "
                      f"time to first token {ans.time_to_first_token_s * 1000:.0f} ms, "
                      f"{ans.decode_tokens_per_s:.1f} tokens/s[/dim]")
        results.append(ans.to_dict())
    if as_json:
        out.print_json(json.dumps({"cache": str(cache), "frames": video.n_frames, "answers": results}))


@app.command()
def chat(
    cache: Path = typer.Argument(..., help="A .voco cache made by `vococli compress`."),
    model: Optional[str] = ModelOpt,
    max_new_tokens: int = typer.Option(128, help="Longest answer per turn in tokens."),
    temperature: float = typer.Option(0.0, help="0 = greedy; > 0 samples."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (with --temperature)."),
    seed: int = typer.Option(0, help="Seed for sampling."),
    load_4bit: bool = typer.Option(False, "--load-4bit", help="Load the language model in 4-bit nf4 (bitsandbytes)."),
    subsample: bool = typer.Option(False, help="Use evenly spaced frames when the cache exceeds the context."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
):
    """Talk about a compressed video, turn by turn (earlier turns stay in the key/value state).

    Type a question and press Enter; `/reset` forgets earlier turns; `/quit` or Ctrl-D ends.
    """
    from .answer import Session

    gen = _gen_config(max_new_tokens, temperature, top_p, seed)
    # room for a few turns; a conversation that outgrows it is told to /reset
    m, video = _load_for_answering(cache, model, device, dtype, load_4bit, subsample,
                                   lambda m: 512 + max_new_tokens)
    session = Session(m, video)
    err.print(f"[dim]{video.n_frames} frames loaded. /reset forgets earlier turns, /quit ends.[/dim]")
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            session.reset()
            continue
        sys.stdout.write("vococli> ")
        try:
            session.ask(line, gen, on_text=lambda s: (sys.stdout.write(s), sys.stdout.flush()))
        except UserError as e:
            err.print(f"error: {e}")
        sys.stdout.write("\n")


@app.command()
def info(
    cache: Path = typer.Argument(..., help="A .voco cache."),
    as_json: bool = typer.Option(False, "--json", help="Print the metadata as JSON."),
):
    """Show what a cache holds: frames, duration, K, model fingerprint, size."""
    from .cache_file import read_info

    meta = read_info(cache)
    if as_json:
        out.print_json(json.dumps(meta))
        return
    v = meta["video"]
    s = meta["sampling"]
    rows = [
        ("video", f"{v['name']} ({v['size']:,} bytes, {meta['video_duration_s']:.2f} s)"),
        ("frames", f"{meta['frames']} of {meta['planned_frames']} planned"
                   + (f", {meta['frames_lost']} lost" if meta.get("frames_lost") else "")
                   + ("" if meta.get("final") else " (unfinished)")),
        ("sampling", f"fps={s['fps']} start={s['start']} end={s['end']} max_frames={s['max_frames']}"),
        ("voco tokens", f"K={meta['k']} per frame, first VoCo position c0={meta['c0']}"),
        ("model", f"{meta['model_fingerprint']} ({meta['model_path']})"),
        ("dtype", meta["dtype"]),
        ("size", f"{meta['bytes'] / 2**20:.2f} MiB in {meta['chunks']} chunk(s), "
                 f"{meta['bytes'] / max(1, meta['frames']) / 2**10:.1f} KiB per frame"),
    ]
    for k, v in rows:
        out.print(f"[bold]{k:>12}[/bold]  {v}")


@app.command()
def synth(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder to write clips and annotations into."),
    seed: int = typer.Option(0, help="Seed: the same seed writes the same annotations."),
    count: int = typer.Option(100, help="Number of clips."),
    kind: str = typer.Option("mix", help="frame, temporal, needle or mix."),
    size: int = typer.Option(96, help="Frame side in pixels."),
    needle_seconds: str = typer.Option("60,600,3600", help="Needle clip lengths in seconds (cycled)."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
):
    """Write a synthetic video QA set: coloured shapes with exact answers (clips, LLaVA JSON, QA JSON)."""
    from .synth import SynthConfig, synthesize

    try:
        lengths = tuple(int(x) for x in needle_seconds.split(","))
    except ValueError:
        raise UserError(f"--needle-seconds {needle_seconds!r}: expected comma-separated whole seconds") from None
    if not lengths or min(lengths) < 4:
        raise UserError("--needle-seconds: each length must be at least 4 seconds")
    cfg = SynthConfig(seed=seed, count=count, kind=kind, size=size, needle_seconds=lengths)
    with _progress("synth") as bar:
        task = bar.add_task("clips", total=count, rate="")
        res = synthesize(cfg, out_dir, progress=lambda done, total: bar.update(task, completed=done))
    if as_json:
        out.print_json(json.dumps(res))
    else:
        out.print(f"{res['out']}: {res['clips']} clips, {res['questions']} questions "
                  "(videos/, train.json, test_qa.json, scenes.json)")


@app.command()
def train(
    data: list[str] = typer.Option(..., "--data", "-d", help="LLaVA-format JSON, or a folder holding train.json "
                                   "(media paths are relative to the JSON's folder). Repeatable."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to write (and to --resume)."),
    media: Optional[Path] = typer.Option(None, help="Folder the media paths in --data are relative to "
                                         "(default: each JSON file's folder)."),
    init: Optional[str] = typer.Option(None, help="Start from random weights of a preset: tiny or synth-small."),
    from_checkpoint: Optional[str] = typer.Option(None, "--from", help="Start from this checkpoint folder "
                                                  "(a LLaVA checkpoint, or an earlier stage)."),
    mask: str = typer.Option("voco", help="voco: text sees only the VoCo tokens; causal: text sees the image "
                             "too (the upper bound, and the first stage of the curriculum)."),
    no_voco_mask: bool = typer.Option(False, "--no-voco-mask", help="Same as --mask causal."),
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
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: torch's choice)."),
    device: str = DeviceOpt,
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast (default: on for CUDA)."),
):
    """Train a VoCo model: only answers are supervised; the mask decides what the text may see.

    Curriculum that works from scratch: train with --mask causal first, then continue
    with --from that checkpoint and the VoCo mask.
    """
    from .train import TrainConfig, train as run_training

    _quiet_transformers()
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    if no_voco_mask:
        mask = "causal"
    cfg = TrainConfig(data=tuple(data), out=str(out_dir), media=str(media) if media else None, init=init, checkpoint=from_checkpoint, mask=mask,
                      compressor=compressor, voco_tokens=voco_tokens, lr=lr, warmup_steps=warmup_steps,
                      batch_size=batch_size, grad_accum=grad_accum, steps=steps, epochs=epochs,
                      freeze_vision=freeze_vision, fps=fps, max_frames=max_frames, keep_frames=keep_frames,
                      save_every=save_every,
                      seed=seed, threads=threads, device=None if device == "auto" else device, bf16=bf16)
    if voco_tokens is not None and voco_tokens < 1:
        raise UserError("--voco-tokens must be at least 1")
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
        st = run_training(cfg, resume=resume, on_step=on_step, notice=lambda s: err.print(s))
    out.print(f"{out_dir}: {st.step} steps, {st.samples:,} conversations in {st.seconds / 60:.1f} min; "
              f"final loss {st.losses[-1][1] if st.losses else float('nan'):.4f} (loss.png beside it)")


experiment_app = typer.Typer(help="Reproducible experiments on synthetic data.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("table1")
def experiment_table1(
    workdir: Path = typer.Option(..., "--workdir", "-w", help="Folder for data, runs, scores and results.md."),
    base_steps: int = typer.Option(1500, help="Steps of the causal base model."),
    stage_steps: int = typer.Option(500, help="Steps of each variant, all continuing from the base."),
    train_frame: int = typer.Option(8000, help="Single-frame training clips (5 questions each)."),
    train_temporal: int = typer.Option(12000, help="Temporal training clips."),
    train_needle: int = typer.Option(1500, help="Short needle training clips (16-64 s)."),
    needle_clips: str = typer.Option("60:30,600:10,3600:4", help="Needle eval sets as seconds:clips."),
    parallel: int = typer.Option(2, help="Variants trained at once (one CPU thread each)."),
):
    """Train the upper bound, VoCo K=1/2/8 and avg-pool K=1 on one budget; score them and the lower bound.

    Writes results.md (the table, the command, the time, the machine). Rerunning the same command
    skips finished steps and resumes interrupted ones.
    """
    from .experiment import Table1Config, table1

    _quiet_transformers()
    try:
        needles = tuple((int(a), int(b)) for a, b in (x.split(":") for x in needle_clips.split(",")))
    except ValueError:
        raise UserError(f"--needle-clips {needle_clips!r}: expected seconds:clips,seconds:clips") from None
    cfg = Table1Config(workdir=str(workdir), base_steps=base_steps, stage_steps=stage_steps,
                       train_frame=train_frame, train_temporal=train_temporal, train_needle=train_needle,
                       needle_eval=needles, parallel=parallel)
    command = "vococli " + " ".join(sys.argv[1:])
    report = table1(cfg, command, notice=lambda s: err.print(s))
    out.print(report.read_text())


@app.command("tiny-model")
def tiny_model(
    output: Path = typer.Argument(..., help="Folder to create."),
    voco_tokens: int = typer.Option(2, help="VoCo tokens per frame stored in the config."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
):
    """Create a tiny RANDOM checkpoint (for tests and smoke runs; its answers are meaningless)."""
    from .tiny import TinyConfig, make_tiny_checkpoint

    _quiet_transformers()
    if output.exists() and any(output.iterdir()):
        raise UserError(f"{output}: exists and is not empty")
    make_tiny_checkpoint(output, TinyConfig(voco_tokens=voco_tokens, seed=seed))
    out.print(f"{output}: tiny random checkpoint (K={voco_tokens}); it runs every command but does not "
              "answer meaningfully")


def main() -> None:
    """Entry point: map user errors to exit code 1 and one line, crashes to exit code 2."""
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except typer.TyperException as e:  # bad flag, missing argument (click's usage errors)
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        err.print(f"error: {message} (see --help)", markup=False)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("interrupted; completed cache chunks are kept and `compress` resumes from them")
        sys.exit(130)
    except UserError as e:
        err.print(f"error: {e}", markup=False)
        sys.exit(1)
    except OSError as e:  # unwritable output, full disk, permissions: the user's environment
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"error: {where}{e.strerror or e}", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted; completed cache chunks are kept and `compress` resumes from them")
        sys.exit(130)
    except Exception as e:  # a bug: say so in one line; VOCOCLI_DEBUG=1 shows the traceback
        if os.environ.get("VOCOCLI_DEBUG"):
            raise
        err.print(f"internal error: {type(e).__name__}: {e} (set VOCOCLI_DEBUG=1 for the traceback)", markup=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
