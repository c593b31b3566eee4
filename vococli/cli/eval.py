"""Benchmark commands: `eval` (answer a QA set, resumable) and `score` (exact, contains or LLM judge).

Each is a thin layer over eval_run / eval_score; cli.py registers them on the `vococli` app.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vococli.cli.common import (CompressorOpt, DecodeOpt, DeviceOpt, DtypeOpt, Load4bitOpt, ModelOpt, PoolOpt, Rate,
                                ThreadsOpt, answer_weights, check_decode_device, err, model_path, out, quiet_transformers, threads_for)
from vococli.errors import UserError


def eval_command(
    dataset: str = typer.Argument(..., help="msvd, msrvtt or activitynet (sets question types and file lookup)."),
    qa: Optional[Path] = typer.Option(None, "--qa", help="One annotation file (LLaMA-VID test_qa.json, original "
                                      "MSVD/MSRVTT-QA, or Chat-UniVi)."),
    questions: Optional[Path] = typer.Option(None, "--questions", help="Questions file of a pair (test_q.json)."),
    answers: Optional[Path] = typer.Option(None, "--answers", help="Answers file of a pair (test_a.json)."),
    videos: Path = typer.Option(..., "--videos", help="Folder holding the videos."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder: run.json, predictions.jsonl, scores."),
    model: Optional[str] = ModelOpt,
    cache_dir: Optional[Path] = typer.Option(None, help="Folder of .voco caches shared between runs "
                                             "(default: OUT/caches)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Force the annotation format: qa-pair, llama-vid, "
                                      "original or chatunivi (default: detected)."),
    mapping: Optional[Path] = typer.Option(None, help="MSVD youtube_mapping.txt for the original MSVD-QA files "
                                           "(default: beside the QA file)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N questions."),
    fps: float = typer.Option(1.0, help="Frames sampled per second of video."),
    max_frames: Optional[int] = typer.Option(None, help="Cap on frames per video (spread evenly)."),
    voco_tokens: Optional[int] = typer.Option(None, help="VoCo tokens per frame (default: the checkpoint's)."),
    compressor: Optional[str] = CompressorOpt,
    pool: Optional[int] = PoolOpt,
    suffix: Optional[str] = typer.Option(None, help="Text appended to every question (default: ' Answer the "
                                         "question using a single word or phrase.'; '' for none)."),
    max_new_tokens: int = typer.Option(32, help="Longest answer in tokens (greedy decoding)."),
    batch_size: Optional[int] = typer.Option(
        None, help="Frames per forward pass while compressing (default: from free GPU memory; 8 on CPU)."),
    retry_errors: bool = typer.Option(False, help="Ask again every question that failed in an earlier run (without "
                                      "it, only those whose video has appeared or changed since)."),
    decode: str = DecodeOpt,
    weights: Optional[str] = typer.Option(
        None, "--weights", show_default=False, help="The language model's weights while answering: full (the "
        "default), nf4 (bitsandbytes) or int4 (torchao); videos are still compressed at full precision."),
    load_4bit: bool = Load4bitOpt,
    cache_dtype: str = typer.Option("auto", help="Storage of the cached keys/values: auto (the model's dtype) "
                                    "or int8."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    threads: Optional[int] = ThreadsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
    evidence: bool = typer.Option(False, "--evidence", help="Record in each prediction the frames the answer drew "
                                  "on (timestamps with weights; decodes with the dynamic path unless --decode "
                                  "static)."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Answer on Ray workers: local (a "
                                      "Ray instance on this machine, loopback only), auto (the running cluster) "
                                      "or HOST:PORT; needs pip install 'vococli[ray]'."),
    workers: int = typer.Option(2, help="Ray workers, each with the model loaded (with --ray)."),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs each Ray worker takes (with --ray)."),
):
    """Answer a video QA benchmark: each video compressed once, every answer saved as it is made.

    Rerunning the same command skips the questions already answered.
    """
    from vococli.choices import Storage, check
    from vococli.eval.predictions import check_run_folder
    from vococli.eval.formats import SHORT_ANSWER_SUFFIX, read_questions
    from vococli.threads import check_threads
    from vococli.video.sampling import Sampling

    # every flag and file is checked before torch and the model code are imported
    if evidence:
        from vococli.answer.paths import evidence_decode

        decode = evidence_decode(decode)
    check_decode_device(decode, device)
    weights = answer_weights(weights, load_4bit)
    check(cache_dtype, Storage, "cache_dtype")
    check_threads(threads)
    sampling = Sampling(fps=fps, max_frames=max_frames)
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    if max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if videos.exists() and not videos.is_dir():
        raise UserError(f"{videos}: not a folder; --videos takes the folder that holds the videos")
    if not videos.is_dir():
        raise UserError(f"{videos}: videos folder not found")
    check_run_folder(out_dir, cache_dir or out_dir / "caches")
    if ray is not None:
        check_ray(workers)
    items, detected = read_questions(dataset, qa=qa, questions=questions, answers=answers, fmt=fmt,
                                     mapping=mapping)
    items = items[:limit] if limit else items
    annotations = [p for p in (qa, questions, answers) if p is not None]
    model_folder = model_path(model)

    from vococli.eval.run import EvalConfig, run_eval
    from vococli.families.loading import answering_model, load_model, resolve_device, resolve_dtype
    from vococli.families.quantize import check_int4_target

    n_threads = threads_for(threads)
    cfg = EvalConfig(dataset=dataset, videos=videos, out=out_dir, cache_dir=cache_dir, threads=n_threads,
                     sampling=sampling, suffix=SHORT_ANSWER_SUFFIX if suffix is None else suffix,
                     max_new_tokens=max_new_tokens, batch_size=batch_size, decode=decode, cache_dtype=cache_dtype,
                     retry_errors=retry_errors, evidence=evidence)
    quiet_transformers()
    if ray is not None:
        from vococli.cluster.eval_ray import run_eval_ray
        from vococli.cluster.workers import WorkerSettings

        per_worker = threads if threads is not None else max(1, n_threads // workers)
        settings = WorkerSettings(model_folder, None if device == "auto" else device, dtype, weights, per_worker,
                                  gpus_per_worker, compressor, pool)
        with progress_for_eval(len(items)) as (on_video, on_item):
            summary = run_eval_ray(settings, items, cfg, annotations, detected, ray, workers, on_video, on_item)
        return report_summary(summary, out_dir, as_json)
    if weights == "int4":
        dev = resolve_device(device)
        check_int4_target(dev, resolve_dtype(dtype, dev))  # before the model loads
    m = load_model(model_folder, device=device, dtype=dtype, voco_tokens=voco_tokens, compressor=compressor, pool=pool,
                   notice=lambda s: err.print(s))
    # the 4-bit answerer shares the embeddings and head with the compressing model; only the
    # decoder's Linear weights are held twice (in full and in 4-bit)
    answerer = answering_model(m, weights) if weights != "full" else None
    with progress_for_eval(len(items)) as (on_video, on_item):
        summary = run_eval(m, items, cfg, annotations, detected, on_video=on_video, on_item=on_item,
                           notice=lambda s: err.print(s), answerer=answerer)
    report_summary(summary, out_dir, as_json)


def check_ray(workers: int) -> None:
    """Ray importable and a sensible --workers, before anything heavy is imported."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UserError("--ray needs Ray, which is not installed: pip install 'vococli[ray]'")
    if workers < 1:
        raise UserError("--workers must be at least 1")


@contextmanager
def progress_for_eval(questions: int):
    """The videos and questions bars; yields their (on_video, on_item) callbacks."""
    progress = Progress(TextColumn("[bold]{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err,
                        disable=not err.is_terminal)
    with progress:
        vt = progress.add_task("videos", total=None, rate="")
        qt = progress.add_task("questions", total=questions, rate="")
        v_rate, q_rate = Rate(), Rate()
        yield (lambda d, n: progress.update(vt, completed=d, total=n, rate=v_rate(d)),
               lambda d, n: progress.update(qt, completed=d, total=n, rate=q_rate(d)))


def report_summary(summary, out_dir: Path, as_json: bool) -> None:
    all_failed = summary.errors and not summary.answered and summary.errors == summary.questions - summary.already_done
    failed = UserError(f"{out_dir}: every question of this run failed ({summary.errors}; the first: "
                       f"{summary.first_error}); they are in predictions.jsonl")
    if as_json:
        out.print_json(json.dumps({"out": str(out_dir), **summary.__dict__}))
        if all_failed:
            raise failed
        return
    if all_failed:
        raise failed
    earlier = (f" ({summary.earlier_errors} of them errors; --retry-errors asks them again)"
               if summary.earlier_errors else "")
    if summary.retried:
        earlier += f"; {summary.retried} earlier errors asked again"
    out.print(f"{out_dir}: {summary.answered} answered, {summary.errors} errors, {summary.already_done} done "
              f"before{earlier}, of {summary.questions} questions; {summary.videos} videos ({summary.frames_compressed} "
              f"frames compressed) in {summary.seconds:.1f} s. Score with: vococli score {out_dir}")


def score_command(
    run: Path = typer.Argument(..., help="A run folder written by `vococli eval`."),
    judge: str = typer.Option("exact", help="exact (official ActivityNet-QA metric), contains, or llm."),
    judge_url: Optional[str] = typer.Option(None, help="Base URL of an OpenAI-compatible API (--judge llm), "
                                            "e.g. https://api.openai.com/v1."),
    judge_model: Optional[str] = typer.Option(None, help="Judge model name sent to the API (--judge llm)."),
    judge_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key."),
    judge_workers: int = typer.Option(8, help="Concurrent judge requests."),
    judge_retries: int = typer.Option(4, help="Retries per judgement after the first attempt."),
    judge_timeout: float = typer.Option(60.0, help="Seconds one judge request may take in all (connecting, "
                                        "sending, the whole reply)."),
    judge_deadline: float = typer.Option(3600.0, help="Seconds all judgements of this scoring may take; those not "
                                         "made by then are failed (scoring again makes them). 0: no limit."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
):
    """Score a run: accuracy overall and per question type (errors and failed judgements apart).

    Writes scores.json and accuracy_<judge>.png into the run folder. LLM judgements are cached in
    judgements.jsonl, so scoring again costs nothing.
    """
    from vococli.eval.score import score_run
    from vococli.eval.judge import JudgeConfig

    cfg = None
    if judge == "llm":
        if not judge_url or not judge_model:
            raise UserError("--judge llm needs --judge-url and --judge-model")
        if judge_workers < 1 or judge_retries < 0:
            raise UserError("--judge-workers must be at least 1 and --judge-retries at least 0")
        if not (judge_timeout > 0 and judge_timeout < float("inf")) or not (0 <= judge_deadline < float("inf")):
            raise UserError(f"--judge-timeout must be a positive number of seconds and --judge-deadline 0 or more, "
                            f"got {judge_timeout} and {judge_deadline}")
        cfg = JudgeConfig(url=judge_url, model=judge_model, key_env=judge_key_env, workers=judge_workers,
                          retries=judge_retries, timeout_s=judge_timeout, deadline_s=judge_deadline or None)
    progress = Progress(TextColumn("[bold]judging"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, disable=not err.is_terminal or judge != "llm")
    with progress:
        task = progress.add_task("judging", total=None)
        res = score_run(run, judge, cfg, on_progress=lambda d, n: progress.update(task, completed=d, total=n))
    d = res.to_dict()
    failed = d["overall"].get("failed_judgements", 0)
    if failed:
        err.print(f"warning: {failed} judgements failed ({res.failure}); they are counted apart, and scoring "
                  "again retries them", markup=False)
    if as_json:
        out.print_json(json.dumps(d))
        return
    llm = judge == "llm"
    table = Table(title=f"{run} ({judge})")
    for col in ["type", "accuracy", "correct", "judged", "errors", "answered"] + (["failed", "score"] if llm else []):
        table.add_column(col, justify="left" if col == "type" else "right")
    typed = list(d["by_type"].items()) if set(d["by_type"]) != {"all"} else []  # untyped sets: overall only
    for name, t in [("overall", d["overall"])] + typed:
        acc = "-" if t["accuracy"] is None else f"{100 * t['accuracy']:.1f}%"
        answered = "-" if t["answered"] is None else f"{100 * t['answered']:.1f}%"
        row = [name, acc, str(t["correct"]), str(t["judged"]), str(t["errors"]), answered]
        if llm:
            row += [str(t["failed_judgements"]), "-" if t["score"] is None else f"{t['score']:.2f}"]
        table.add_row(*row, style="bold" if name == "overall" else None)
    out.print(table)
    if llm and d.get("judge_models_reported"):
        names = ", ".join(f"{k} ({v})" for k, v in d["judge_models_reported"].items())
        out.print(f"judge model reported by the endpoint: {names}")
        if len(d["judge_models_reported"]) > 1:
            err.print("warning: the endpoint reported more than one model name; scores mix judges")
