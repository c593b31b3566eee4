"""`vococli bench`: the command line and the tables it prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from rich.console import Console

from vococli.cli.common import DeviceOpt, DtypeOpt, ThreadsOpt, err, out, quiet_transformers, threads_for
from vococli.errors import UserError

# the tables are wide: keep them readable when the output goes to a file or a log
wide = Console(highlight=False, soft_wrap=True, width=None if out.is_terminal else 180)


def bench_command(
    preset: str = typer.Option("tiny", help="Architecture with random weights: tiny (CPU) or vicuna-7b "
                               "(CLIP ViT-L/14-336 + 2-layer projector + 32-layer LLaMA, hidden 4096)."),
    voco_tokens: int = typer.Option(2, help="VoCo tokens per frame (K)."),
    batch_size: Optional[int] = typer.Option(None, help="Frames per stage-1 forward (default: from free GPU memory)."),
    video_frames: int = typer.Option(64, help="Frames of the video written for the end-to-end compress run (1 fps)."),
    video: Optional[Path] = typer.Option(None, help="Compress this video file (sampled at 1 fps) in the "
                                         "end-to-end run instead of writing one."),
    minutes: str = typer.Option("1,10,60", help="Cache lengths for the long-cache answering rows, in minutes of "
                                "1-fps video."),
    answer_tokens: int = typer.Option(64, help="Tokens generated per answer (end-of-sequence ignored)."),
    repeats: int = typer.Option(3, help="Timed repetitions per measurement (the median is reported)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="4-bit answering models timed beside the full "
                                          "one, comma-separated: nf4 (bitsandbytes), int4 (torchao); none for "
                                          "neither (default: nf4,int4)."),
    four_bit: bool = typer.Option(True, "--4bit/--no-4bit", hidden=True, help="--no-4bit: the same as --weights none "
                                  "(an older spelling)."),
    compile: bool = typer.Option(False, "--compile", help="Also time the compiled decode path "
                                 "(`--decode compiled`) on the longest cache, and stage 1 and the end-to-end "
                                 "compress with stage 1's layers compiled."),
    sections: str = typer.Option(",".join(("ceilings", "vision", "stage1", "compress", "table7", "long")),
                                 help="Comma-separated sections to run; also evidence (what --evidence costs), ray (compress-many on 1 "
                                 "and 2 Ray workers against one process), startup (the commands' start-up "
                                 "against `import torch`) and serve (16 clients against `vococli serve`), both "
                                 "with the default model."),
    save: Optional[Path] = typer.Option(None, help="Also write the results to this JSON file."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    threads: Optional[int] = ThreadsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of tables."),
):
    """Measure compression and answering speed and memory on random weights (nothing is downloaded).

    Prints a table per section as it finishes; times are medians after a warm-up.
    """
    from vococli.families.presets import ARCH_NAMES
    from vococli.bench.run import BenchConfig, run_bench
    from vococli.bench.timing import SECTIONS
    from vococli.families.loading import resolve_device, resolve_dtype

    if preset not in ARCH_NAMES:
        raise UserError(f"--preset {preset!r}: choose one of {', '.join(ARCH_NAMES)}")
    chosen = tuple(s.strip() for s in sections.split(",") if s.strip())
    bad = [s for s in chosen if s not in SECTIONS]
    if bad or not chosen:
        raise UserError(f"--sections: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(SECTIONS)}")
    try:
        lengths = tuple(float(m) for m in minutes.split(",") if m.strip())
    except ValueError:
        raise UserError(f"--minutes {minutes!r}: give numbers separated by commas, e.g. 1,10,60") from None
    if any(m <= 0 for m in lengths) or not lengths:
        raise UserError("--minutes: lengths must be positive")
    if repeats < 1 or answer_tokens < 2 or video_frames < 1 or voco_tokens < 1:
        raise UserError("--repeats, --video-frames and --voco-tokens must be at least 1, --answer-tokens at least 2")
    if batch_size is not None and batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if video is not None:
        from vococli.video.reader import VideoReader

        if not video.is_file():
            raise UserError(f"{video}: video file not found")
        VideoReader(video)  # refuses a file that is not a readable video before anything runs
    if weights is not None and not four_bit:
        raise UserError("--no-4bit and --weights both choose the 4-bit models; give one of them")
    weights = "nf4,int4" if weights is None else weights
    names = [w.strip() for w in weights.split(",")]
    if not four_bit or weights.strip() == "none":
        quantized: tuple[str, ...] = ()
    elif not all(names) or any(w not in ("full", "nf4", "int4") for w in names):
        raise UserError(f"--weights {weights!r}: give nf4, int4 or both, separated by a comma (none: neither)")
    else:  # the full model is always timed
        quantized = tuple(dict.fromkeys(w for w in names if w != "full"))
    threads_for(threads)  # the bench's machine line reports the count
    quiet_transformers()
    dev = resolve_device(device)
    cfg = BenchConfig(preset=preset, device=dev, dtype=resolve_dtype(dtype, dev), voco_tokens=voco_tokens,
                      batch_size=batch_size, video_frames=video_frames, video=video, minutes=lengths,
                      answer_tokens=answer_tokens, repeats=repeats, quantized=quantized, compile=compile,
                      sections=chosen)
    if not as_json:
        out.print(f"[bold]vococli bench[/bold]: preset {preset}, {cfg.dtype}, K={voco_tokens}, "
                  f"median of {repeats} after a warm-up")
    partial: dict = {}

    def report(name, value):
        partial[name] = value
        if save is not None:  # after every section, so an interrupted run keeps what it measured
            save.parent.mkdir(parents=True, exist_ok=True)
            save.write_text(json.dumps(value if name == "long_row" else partial, indent=1) + "\n")
        if not as_json and name != "long_row":
            print_section(name, value)

    result = run_bench(cfg, report=report)
    for w in quantized:
        if f"{w}_error" in result:
            err.print(f"{w} answering model not built: {result[f'{w}_error'].removeprefix('UserError: ')}",
                      style="red", markup=False)
    if save is not None:
        save.write_text(json.dumps(result, indent=1) + "\n")
    if as_json:
        out.print_json(json.dumps(result))
    else:
        out.print(f"device: {result['device']}; {', '.join(f'{k} {v}' for k, v in result['versions'].items())}")


def _table(title: str, rows: list[dict], columns: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for _, label in columns:
        table.add_column(label, justify="right")
    for r in rows:
        table.add_row(*[_cell(r.get(key)) for key, _ in columns])
    return table


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1 else f"{v:,.1f}"
    return str(v)


def print_section(name: str, value) -> None:
    if isinstance(value, dict) and "error" in value:
        err.print(f"[red]{name}: failed: {value['error']}[/red]")
        return
    if name == "ceilings":
        out.print(f"ceilings: matmul {value['matmul_tflops']} TFLOP/s ({value['matmul_shape']}), "
                  f"device copy {value['copy_gb_s']} GB/s (read + write)")
    elif name == "model":
        out.print(f"model: built in {value['build_s']} s; {value['frame_tokens']} tokens per frame; "
                  f"LLM {value['llm_gib']} GiB, vision tower {value['vision_gib']} GiB")
    elif name == "compression":
        rows = []
        for key, label in (("vision", "vision encoding"), ("stage1", "stage 1 (VoCo keys/values)")):
            if key in value:
                rows.append({"what": label, **value[key]})
        if "stage1" in value:
            s = value["stage1"]
            rows.append({"what": "stage 1, general prefill (baseline)", "frames_s": s["plain_frames_s"],
                         "peak_gib": s["plain_peak_gib"]})
            if "compiled_frames_s" in s:
                rows.append({"what": "stage 1, layers compiled (--compile)", "frames_s": s["compiled_frames_s"]})
        wide.print(_table(f"Compression, batch {value['batch']}", rows,
                         [("what", "stage"), ("frames_s", "frames/s"), ("tflops", "TFLOP/s"),
                          ("share_of_matmul", "of matmul ceiling"), ("peak_gib", "extra GiB")]))
        if "stage1" in value:
            s = value["stage1"]
            out.print(f"stage 1: {s['speedup']}x the general prefill"
                      + (f"; compiled: {s['compiled_speedup']}x the fast path (compiled in {s['compile_s']} s, "
                         f"largest key/value difference {s['compiled_max_diff']:.2g})" if "compiled_speedup" in s else ""))
    elif name == "compress_video":
        out.print(f"compress (end to end, {value['video']}): {value['frames']} frames in {value['seconds']} s = "
                  f"{value['frames_s']} frames/s ({value['backend']}); an hour at 1 fps would take "
                  f"{value['hour_at_1fps_s']} s"
                  + (f"; extra GPU memory {value['peak_gib']} GiB" if value.get("peak_gib") is not None else ""))
        out.print(f"  decoding alone: {value['decode_frames_s']} frames/s; compress waited {value['decode_wait_s']} s "
                  "for decoded frames")
        if "compiled_seconds" in value:
            out.print(f"compress with stage 1 compiled (--compile, compilation included): {value['compiled_seconds']} s "
                      f"= {value['compiled_frames_s']} frames/s, {value['compiled_speedup']}x")
    elif name == "startup":
        wide.print(_table(f"Start-up (fresh processes, median of {value['repeats']})", value["rows"],
                         [("command", "command"), ("seconds", "seconds"), ("vs_import_torch", "vs import torch")]))
    elif name == "serve":
        out.print(f"serve: {value['clients']} clients, {value['requests']} requests over {value['videos']} videos: "
                  f"{value['errors']} errors, {value['caches']} caches made; latency p50 {value['p50_s']} s, "
                  f"p95 {value['p95_s']} s, max {value['max_s']} s; {value['answers_per_s']} answers/s")
    elif name == "table7":
        wide.print(_table("Answering one question (Table 7 of the paper; vision tower not counted)", value,
                         [("method", "method"), ("cached_tokens", "cached tokens"), ("cache_mib", "cache MiB"),
                          ("first_token_ms", "first token ms"), ("first_token_vs_baseline", "vs (a)"),
                          ("answer_ms", "answer ms"), ("vs_baseline", "vs (a)"), ("peak_gib", "extra GiB")]))
    elif name == "ray":
        wide.print(_table(f"compress-many of {value['clips']} 60-s clips ({value['cpus']} CPUs)", value["rows"],
                          [("how", "how"), ("workers", "workers"), ("threads_per_worker", "threads each"),
                           ("start_s", "worker start s"), ("videos_s", "videos s"), ("per_video_ms", "ms/video"),
                           ("speed_vs_one_process", "vs one process")]))
        out.print(f"Ray adds {value['ray_overhead_per_video_ms']} ms per video (1 worker against one process)")
    elif name == "evidence":
        wide.print(_table("What --evidence costs (dynamic path, same answers)", value,
                          [("minutes", "minutes"), ("frames", "frames"), ("answer_tokens", "tokens"),
                           ("ttft_ms", "first token ms"), ("ttft_evidence_ms", "with evidence"),
                           ("answer_ms", "answer ms"), ("answer_evidence_ms", "with evidence"),
                           ("overhead", "ratio")]))
    elif name == "long":
        columns = [("minutes", "minutes"), ("cache_gib", "cache GiB"), ("weights", "weights"),
                   ("path", "path"), ("load_s", "load s"), ("ttft_ms", "first token ms"),
                   ("decode_tok_s", "decode tok/s"), ("graph_only_tok_s", "graph alone tok/s"),
                   ("decode_limit_tok_s", "bandwidth limit"),
                   ("share_of_limit", "of limit"), ("peak_gib", "peak GiB")]
        if any("error" in r for r in value):
            columns.append(("error", "error"))
        wide.print(_table("Answering over long caches (1 fps)", value, columns))
