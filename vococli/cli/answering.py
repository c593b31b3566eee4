"""`vococli ask` and `vococli chat`: questions about a compressed video."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from vococli.cli.common import (CacheArg, DecodeOpt, DeviceOpt, DtypeOpt, Load4bitOpt, ModelOpt, SeedOpt,
                                EvidenceOpt, SubsampleOpt, TemperatureOpt, ThreadsOpt, TopPOpt, WeightsOpt, answer_weights,
                                check_decode_device, compress_progress, err, model_path, out, quiet_transformers,
                                threads_for)
from vococli.errors import UserError


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
    from vococli.answer.settings import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)


def ask(
    cache: Path = CacheArg,
    question: Optional[str] = typer.Argument(None, help="The question."),
    questions: list[str] = typer.Option([], "--question", "-q", help="More questions (repeatable), one cache load."),
    model: Optional[str] = ModelOpt,
    max_new_tokens: int = typer.Option(128, help="Longest answer in tokens."),
    temperature: float = TemperatureOpt,
    top_p: float = TopPOpt,
    seed: int = SeedOpt,
    stream: bool = typer.Option(False, help="Print answer tokens as they are generated."),
    weights: Optional[str] = WeightsOpt,
    load_4bit: bool = Load4bitOpt,
    subsample: bool = SubsampleOpt,
    decode: str = DecodeOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    threads: Optional[int] = ThreadsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print answers and timings as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print time to first token and tokens/s."),
    evidence: bool = EvidenceOpt,
    evidence_plot: Optional[Path] = typer.Option(None, metavar="FILE.png", help="Draw each answer's evidence over "
                                                 "the time line, with the top frames when the video is still on "
                                                 "disk (implies --evidence; several questions: FILE-1.png, ...)."),
):
    """Answer questions about a compressed video (or a video file: its cache VIDEO.voco is made
    first when there is none, and reused by the next question)."""
    from vococli.answer.opening import open_for_answering
    from vococli.answer.paths import resolve_decode

    evidence = evidence or evidence_plot is not None
    if evidence:
        from vococli.answer.paths import evidence_decode

        decode = evidence_decode(decode)
    check_decode_device(decode, device)
    weights = answer_weights(weights, load_4bit)
    qs = ([question] if question else []) + list(questions)
    if not qs:
        raise UserError("give a question (ask CACHE \"question\" or -q \"question\")")
    gen = _gen_config(max_new_tokens, temperature, top_p, seed)
    answerer = model_path(model)
    _check_cache(cache, threads)
    from vococli.answer.prompts import prompt_length

    n_threads = threads_for(threads)
    quiet_transformers()
    video_file = cache if cache.is_file() else None
    if cache.is_file():  # a video: answer from its cache, made first when needed
        cache, answerer = _cache_of_video(cache, answerer, device, dtype, weights)
    session = open_for_answering(cache, answerer, device=device, dtype=dtype, weights=weights,
                                 decode=decode, subsample=subsample, notice=err.print,
                                 reserve=lambda m: max(prompt_length(m, q) for q in qs) + max_new_tokens)
    m, video = session.model, session.video
    path = resolve_decode(m, decode)
    results = []
    for q in qs:
        session.reset()
        if len(qs) > 1 and not as_json:
            out.print(f"[bold]Q:[/bold] {q}")
        if stream and not as_json:
            ans = session.ask(q, gen, on_text=_stdout_stream(), evidence=evidence)
            sys.stdout.write("\n")
        else:
            ans = session.ask(q, gen, evidence=evidence)
            if not as_json:
                sys.stdout.write(ans.text + "\n")
        if ans.evidence is not None and not as_json:
            sys.stdout.write(ans.evidence.line() + "\n")
        if evidence_plot is not None and ans.evidence is not None:
            _plot(ans, evidence_plot, len(results) + 1 if len(qs) > 1 else 0, cache, video.meta, video_file)
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
                                   "decode": path, "threads": n_threads, "answers": results}))


def _plot(ans, plot: Path, number: int, cache: Path, meta, video_file: Path | None) -> None:
    from vococli.answer.evidence_plot import find_video, plot_evidence

    target = plot.with_name(f"{plot.stem}-{number}{plot.suffix}") if number else plot
    video = find_video(cache, meta, video_file)
    plot_evidence(ans.evidence, target, ans.question, ans.text, video)
    err.print(f"[dim]{target}: evidence plot" + ("" if video else " (the video is not beside its cache: no "
                                                  "thumbnails)") + "[/dim]")


def _check_cache(cache: Path, threads: int | None) -> None:
    """Refuse a missing or damaged cache (or a bad --threads) before anything heavy is imported."""
    from vococli.cache.chunks import read_info
    from vococli.threads import check_threads

    check_threads(threads)
    if not cache.is_file():  # a file is a video (ask compresses it first)
        read_info(cache)


def _cache_of_video(video: Path, model: str, device: str, dtype: str, weights: str):
    """The video's cache (compressed with a progress bar when needed) and what answers from it:
    the model loaded to compress, reused, or the checkpoint path when nothing was loaded."""
    from vococli.compress.oneshot import cache_for_video
    from vococli.families.loading import answering_model

    with compress_progress() as progress:
        cache, full = cache_for_video(video, model, device=device, dtype=dtype, notice=err.print, progress=progress)
    return cache, (model if full is None else answering_model(full, weights))


def chat(
    cache: Path = CacheArg,
    model: Optional[str] = ModelOpt,
    max_new_tokens: int = typer.Option(128, help="Longest answer per turn in tokens."),
    temperature: float = TemperatureOpt,
    top_p: float = TopPOpt,
    seed: int = SeedOpt,
    weights: Optional[str] = WeightsOpt,
    load_4bit: bool = Load4bitOpt,
    subsample: bool = SubsampleOpt,
    decode: str = DecodeOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    threads: Optional[int] = ThreadsOpt,
    evidence: bool = EvidenceOpt,
):
    """Talk about a compressed video, turn by turn (earlier turns stay in the key/value state).

    Type a question and press Enter (arrow keys edit and recall earlier lines). Ctrl-C stops an
    answer and returns to the prompt; /reset forgets earlier turns; /help lists the commands;
    /quit or Ctrl-D ends.
    """
    from vococli.answer.opening import open_for_answering

    if evidence:
        from vococli.answer.paths import evidence_decode

        decode = evidence_decode(decode)
    check_decode_device(decode, device)
    weights = answer_weights(weights, load_4bit)
    gen = _gen_config(max_new_tokens, temperature, top_p, seed)
    path = model_path(model)
    _check_cache(cache, threads)
    threads_for(threads)
    quiet_transformers()
    # room for a few turns; a conversation that outgrows it is told to /reset
    session = open_for_answering(cache, path, device=device, dtype=dtype, weights=weights,
                                 decode=decode, subsample=subsample, notice=err.print,
                                 reserve=512 + max_new_tokens)
    video = session.video
    _line_editing()
    err.print(f"[dim]{video.n_frames} frames loaded. {CHAT_HELP}[/dim]")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:  # as in a shell: drop the line, keep the chat
            sys.stdout.write("\n")
            continue
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line in ("/help", "/?"):
            err.print(CHAT_HELP, markup=False)
            continue
        if line == "/reset":
            session.reset()
            err.print("[dim]earlier turns forgotten[/dim]")
            continue
        if line.startswith("/"):
            err.print(f"unknown command {line.split()[0]}; {CHAT_HELP}", markup=False)
            continue
        sys.stdout.write("vococli> ")
        try:
            ans = session.ask(line, gen, on_text=_stdout_stream(), evidence=evidence)
            if not ans.text:
                sys.stdout.write("(empty answer)")
            if ans.evidence is not None:
                sys.stdout.write("\n" + ans.evidence.line())
        except KeyboardInterrupt:  # stops this answer only; the conversation is as before it
            sys.stdout.write(" [stopped]")
        except UserError as e:
            err.print(f"error: {e}")
        sys.stdout.write("\n")


CHAT_HELP = ("Commands: /reset forgets earlier turns, /help shows this, /quit (or Ctrl-D) ends; "
             "Ctrl-C stops an answer.")


def _line_editing() -> None:
    """Arrow keys, editing and history at the prompt (GNU readline or libedit, where Python has it)."""
    if not sys.stdin.isatty():
        return
    try:
        import readline  # noqa: F401  (importing it is what turns line editing on for input())
    except ImportError:
        pass
