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

from vococli.cli.common import (DecodeOpt, DeviceOpt, DtypeOpt, Load4bitOpt, ModelOpt, Rate, WeightsOpt, answer_weights,
                         check_decode_device, err,
                         model_path, out, progress_bar, quiet_transformers)
from vococli.cli.bench import bench_command
from vococli.cli.eval import eval_command, score_command
from vococli.cli.training import experiment_table1, synth, tiny_model, train
from vococli.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Answer questions about long videos from compact VoCo caches.")

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
    batch_size: Optional[int] = typer.Option(
        None, help="Frames per forward pass (default: chosen from free GPU memory; 8 on CPU)."),
    chunk_frames: int = typer.Option(128, help="Frames per cache chunk (the unit of resuming)."),
    overwrite: bool = typer.Option(False, help="Replace an existing cache instead of resuming it."),
    cache_dtype: str = typer.Option("auto", help="Storage of the cached keys/values: auto (the model's dtype) "
                                    "or int8 (half the size of bf16; accuracy cost in docs/performance.md)."),
    compile: bool = typer.Option(False, "--compile", help="Run stage 1's layers through torch.compile (compiles "
                                 "on the first batch; the same keys/values up to rounding)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Compress a video into a VoCo cache (resumes an interrupted run of the same job)."""
    from vococli.compress.pipeline import compress_video
    from vococli.families.base import load_model
    from vococli.video.reader import Sampling

    quiet_transformers()
    if not video.exists():
        raise UserError(f"{video}: file not found")
    m = load_model(model_path(model), device=device, dtype=dtype, voco_tokens=voco_tokens)
    sampling = Sampling(fps=fps, start=start, end=end, max_frames=max_frames)
    with progress_bar("compress") as bar:
        task = bar.add_task("frames", total=None, rate="")
        rate = Rate(" frames/s", digits=1)
        res = compress_video(m, video, output, sampling, batch_size=batch_size, chunk_frames=chunk_frames,
                             overwrite=overwrite, cache_dtype=cache_dtype, compile=compile,
                             notice=lambda s: err.print(s),
                             progress=lambda done, total: bar.update(task, total=total, completed=done,
                                                                     rate=rate(done)))
    if as_json:
        out.print_json(json.dumps(res.to_dict()))
    elif res.computed:
        out.print(f"{res.path}: {res.frames} frames, K={m.layout.k}; compressed {res.computed} frames in "
                  f"{res.seconds:.1f} s ({res.frames_per_s:.1f} frames/s, {res.backend})")
    else:
        out.print(f"{res.path}: {res.frames} frames, K={m.layout.k}")


def _stdout_stream():
    """An `on_text` callback printing streamed answer text as it comes, without the leading
    space the first token carries (the finished answer is stripped the same way)."""
    started = [False]

    def write(text: str) -> None:
        if not started[0]:
            text = text.lstrip()
            started[0] = bool(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    return write


def _gen_config(max_new_tokens: int, temperature: float, top_p: float, seed: int):
    from vococli.answer.session import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)


def _load_for_answering(cache: Path, model, device, dtype, weights, subsample, reserve):
    """Load the answering model and the cache, fitted to the context; `reserve(model)` is the
    number of positions the prompt and the answer need after the frames."""
    from vococli.cache.chunks import load_cache, read_info
    from vococli.families.base import load_model
    from vococli.cache.kv import fit_to_context

    quiet_transformers()
    info = read_info(cache)  # validates the cache before the model is loaded
    m = load_model(model_path(model), device=device, dtype=dtype, vision=False, weights=weights,
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
    weights: Optional[str] = WeightsOpt,
    load_4bit: bool = Load4bitOpt,
    subsample: bool = typer.Option(False, help="Use evenly spaced frames when the cache exceeds the context."),
    decode: str = DecodeOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    as_json: bool = typer.Option(False, "--json", help="Print answers and timings as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print time to first token and tokens/s."),
):
    """Answer questions about a compressed video."""
    from vococli.answer.static import open_session, resolve_decode

    check_decode_device(decode, device)
    weights = answer_weights(weights, load_4bit)
    qs = ([question] if question else []) + list(questions)
    if not qs:
        raise UserError("give a question (ask CACHE \"question\" or -q \"question\")")
    gen = _gen_config(max_new_tokens, temperature, top_p, seed)
    from vococli.answer.session import prompt_length

    m, video = _load_for_answering(cache, model, device, dtype, weights, subsample,
                                   lambda m: max(prompt_length(m, q) for q in qs) + max_new_tokens)
    session = open_session(m, video, decode)
    path = resolve_decode(m, decode)
    results = []
    for q in qs:
        session.reset()
        if len(qs) > 1 and not as_json:
            out.print(f"[bold]Q:[/bold] {q}")
        if stream and not as_json:
            ans = session.ask(q, gen, on_text=_stdout_stream())
            sys.stdout.write("\n")
        else:
            ans = session.ask(q, gen)
            if not as_json:
                sys.stdout.write(ans.text + "\n")
        if not ans.text and not as_json:
            err.print("[dim](the model gave an empty answer)[/dim]")
        if verbose and not as_json:
            rate = f"{ans.decode_tokens_per_s:.1f} tokens/s" if len(ans.token_ids) > 1 else "no decode steps"
            if path == "compiled" and not results:
                rate += " (this first answer includes compiling the decode step)"
            err.print(f"[dim]{ans.prompt_tokens} prompt tokens, {len(ans.token_ids)} answer tokens; "
                      f"time to first token {ans.time_to_first_token_s * 1000:.0f} ms, {rate}[/dim]")
        results.append(ans.to_dict())
    if as_json:
        out.print_json(json.dumps({"cache": str(cache), "frames": video.n_frames, "weights": m.weights,
                                   "dtype": str(m.dtype).removeprefix("torch."), "device": str(m.device),
                                   "decode": path, "answers": results}))


@app.command()
def chat(
    cache: Path = typer.Argument(..., help="A .voco cache made by `vococli compress`."),
    model: Optional[str] = ModelOpt,
    max_new_tokens: int = typer.Option(128, help="Longest answer per turn in tokens."),
    temperature: float = typer.Option(0.0, help="0 = greedy; > 0 samples."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (with --temperature)."),
    seed: int = typer.Option(0, help="Seed for sampling."),
    weights: Optional[str] = WeightsOpt,
    load_4bit: bool = Load4bitOpt,
    subsample: bool = typer.Option(False, help="Use evenly spaced frames when the cache exceeds the context."),
    decode: str = DecodeOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
):
    """Talk about a compressed video, turn by turn (earlier turns stay in the key/value state).

    Type a question and press Enter; `/reset` forgets earlier turns; `/quit` or Ctrl-D ends.
    """
    from vococli.answer.static import open_session

    check_decode_device(decode, device)
    weights = answer_weights(weights, load_4bit)
    gen = _gen_config(max_new_tokens, temperature, top_p, seed)
    # room for a few turns; a conversation that outgrows it is told to /reset
    m, video = _load_for_answering(cache, model, device, dtype, weights, subsample,
                                   lambda m: 512 + max_new_tokens)
    session = open_session(m, video, decode)
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
            err.print("[dim]earlier turns forgotten[/dim]")
            continue
        if line.startswith("/"):
            err.print(f"unknown command {line.split()[0]}: /reset forgets earlier turns, /quit ends", markup=False)
            continue
        sys.stdout.write("vococli> ")
        try:
            ans = session.ask(line, gen, on_text=_stdout_stream())
            if not ans.text:
                sys.stdout.write("(empty answer)")
        except UserError as e:
            err.print(f"error: {e}")
        sys.stdout.write("\n")


@app.command()
def info(
    cache: Path = typer.Argument(..., help="A .voco cache."),
    as_json: bool = typer.Option(False, "--json", help="Print the metadata as JSON."),
):
    """Show what a cache holds: frames, duration, K, model fingerprint, size."""
    from vococli.cache.chunks import read_info, storage

    meta = read_info(cache)
    if as_json:
        out.print_json(json.dumps(meta))
        return
    v = meta["video"]
    s = meta["sampling"]
    rows = [
        ("video", f"{v['name']} ({v['size']:,} bytes; {meta['video_duration_s']:.2f} s from first to last frame)"),
        ("frames", f"{meta['frames']} of {meta['planned_frames']} planned"
                   + (f", {meta['frames_lost']} lost" if meta.get("frames_lost") else "")
                   + ("" if meta.get("final") else " (unfinished)")),
        ("sampling", f"fps={s['fps']} start={s['start']} end={s['end']} max_frames={s['max_frames']}"),
        ("voco tokens", f"K={meta['k']} per frame, first VoCo position c0={meta['c0']}"),
        ("model", f"{meta['model_fingerprint']} ({meta['model_path']})"),
        ("dtype", meta["dtype"] if storage(meta) == meta["dtype"] else f"{meta['dtype']}, stored as {storage(meta)}"),
        ("size", f"{meta['bytes'] / 2**20:.2f} MiB in {meta['chunks']} chunk(s), "
                 f"{meta['bytes'] / max(1, meta['frames']) / 2**10:.1f} KiB per frame"),
    ]
    for k, v in rows:
        out.print(f"[bold]{k:>12}[/bold]  {v}")


# benchmark commands live in cli_eval, commands that make data and models in cli_training;
# registered here, in --help order
app.command("eval")(eval_command)
app.command("score")(score_command)
app.command("bench")(bench_command)
app.command()(synth)
app.command()(train)
experiment_app = typer.Typer(help="Reproducible experiments on synthetic data.", no_args_is_help=True)
experiment_app.command("table1")(experiment_table1)
app.add_typer(experiment_app, name="experiment")
app.command("tiny-model")(tiny_model)


def main() -> None:
    """Entry point: map user errors to exit code 1 and one line, crashes to exit code 2."""
    interrupted = _interrupted_message(sys.argv[1:2])
    try:
        rc = app(standalone_mode=False)
        if rc == 130:  # click turns Ctrl-C into this return code when not standalone
            err.print(interrupted)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except typer.TyperException as e:  # bad flag, missing argument (click's usage errors)
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if message.strip():  # no command at all: the help was printed
            err.print(f"error: {message} (see --help)", markup=False)
        sys.exit(1 if message.strip() else 0)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print(interrupted)
        sys.exit(130)
    except UserError as e:
        err.print(f"error: {e}", markup=False)
        sys.exit(1)
    except OSError as e:  # unwritable output, full disk, permissions: the user's environment
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"error: {where}{e.strerror or e}", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print(interrupted)
        sys.exit(130)
    except Exception as e:  # a bug: say so in one line; VOCOCLI_DEBUG=1 shows the traceback
        if os.environ.get("VOCOCLI_DEBUG"):
            raise
        reason = _compile_failure(e)
        if reason:
            err.print(f"error: torch.compile cannot build its kernels on this machine ({reason}); "
                      "run without --compile / --decode compiled", markup=False)
            sys.exit(1)
        err.print(f"internal error: {type(e).__name__}: {e} (set VOCOCLI_DEBUG=1 for the traceback)", markup=False)
        sys.exit(2)


def _interrupted_message(command: list[str]) -> str:
    """What Ctrl-C leaves behind, for the command that was interrupted."""
    name = command[0] if command else ""
    if name == "compress":
        return "interrupted; the finished cache chunks are kept: the same command resumes after them"
    if name in ("eval", "experiment"):
        return "interrupted; finished work is kept: the same command resumes it"
    if name == "train":
        return "interrupted; the last save is kept: add --resume to continue from it"
    return "interrupted"


def _compile_failure(e: BaseException) -> str | None:
    """When torch.compile failed for want of a working toolchain on this machine (no C++ compiler
    for inductor's CPU kernels, no Triton, a GPU too old for it), the reason in one line; None for
    anything else, which stays an internal error."""
    if "torch._inductor.exc" not in sys.modules:
        return None
    from torch._inductor import exc

    machine = tuple(getattr(exc, n) for n in ("InvalidCxxCompiler", "CppCompileError", "CUDACompileError",
                                              "TritonMissing", "GPUTooOldForTriton") if hasattr(exc, n))
    for _ in range(4):  # BackendCompilerFailed / InductorError wrap the real cause
        if isinstance(e, machine):
            text = str(e).strip()
            return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__
        e = getattr(e, "inner_exception", None) or e.__cause__
        if e is None:
            return None
    return None


if __name__ == "__main__":
    main()
