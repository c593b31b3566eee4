"""Batch answering for a video QA benchmark: compress each video once, ask all its questions.

A run folder holds:
- `run.json`: what is needed to reproduce the run (model fingerprint, K, sampling, prompt suffix,
  chat template hash, generation settings, package versions, annotation file hashes);
- `predictions.jsonl` (eval/predictions.py): one JSON object per question, appended and flushed
  to disk as each answer is made, so a killed run loses at most the question in flight and a
  rerun skips what is done;
- `caches/` (unless a shared cache folder is given): one .voco cache per video (eval/caches.py).
One run at a time holds the folder (a second is refused). A question whose annotation entry or
video is unusable gets a line with its `error`; problems of the machine (a full disk, memory)
stop the run without recording anything, and a rerun goes on from there.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from vococli.answer.opening import open_for_answering
from vococli.answer.prompts import prompt_length
from vococli.answer.session import GenerationConfig
from vococli.errors import EnvironmentProblem, UserError
from vococli.eval.caches import compressed_cache
from vococli.eval.formats import SHORT_ANSWER_SUFFIX, find_video
from vococli.eval.items import QAItem, printable
from vococli.eval.predictions import (NO_ROOM, PREDICTIONS, RUN_FILE, PredictionLog, check_run_folder,
                                      may_have_gone_away, read_predictions, rewrite_predictions, video_state)
from vococli.eval.record import check_same_run, run_record
from vococli.families.base import VocoModel
from vococli.locks import lock_folder
from vococli.video.sampling import Sampling

if TYPE_CHECKING:
    from vococli.answer.session import Session

DEFAULT_SUFFIX = SHORT_ANSWER_SUFFIX


@dataclass(frozen=True)
class EvalConfig:
    dataset: str
    videos: Path
    out: Path
    cache_dir: Path | None = None  # default: <out>/caches
    sampling: Sampling = Sampling()
    suffix: str = DEFAULT_SUFFIX
    max_new_tokens: int = 32
    batch_size: int | None = None  # frames per forward pass while compressing (None: automatic)
    decode: str = "auto"  # answering path (answer.paths.decode_names)
    cache_dtype: str = "auto"  # storage of cached keys/values (kv_quant.STORAGES)
    retry_errors: bool = False  # ask again every question that failed before (not only those whose cause may be gone)
    threads: int | None = None  # CPU threads torch computes with (recorded in run.json; set by the caller)
    evidence: bool = False  # record each answer's evidence frames (answer/evidence.py) in its line

    @property
    def caches(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.out / "caches"


@dataclass
class EvalSummary:
    questions: int  # in the annotation selection
    already_done: int  # answered (or failed) by an earlier run
    earlier_errors: int  # of already_done, recorded as errors that cannot have gone away (--retry-errors asks them)
    answered: int  # answered by this run
    errors: int  # questions this run recorded as errors
    videos: int  # videos whose questions this run answered (or failed)
    frames_compressed: int  # frames this run compressed (0 when every cache already existed)
    seconds: float
    retried: int = 0  # earlier errors asked again by this run
    first_error: str = ""  # the first error this run recorded


def group_by_video(items: list[QAItem]) -> list[tuple[str, list[QAItem]]]:
    groups: dict[str, list[QAItem]] = {}
    for it in items:
        groups.setdefault(it.video, []).append(it)
    return list(groups.items())


def run_eval(model: VocoModel, items: list[QAItem], cfg: EvalConfig, annotations: list[Path], fmt: str,
             on_video: Callable[[int, int], None] | None = None,
             on_item: Callable[[int, int], None] | None = None,
             notice: Callable[[str], None] = print, answerer: VocoModel | None = None) -> EvalSummary:
    """Answer every question of `items` not yet in `<out>/predictions.jsonl`, video by video.

    `model` (with its vision tower) compresses; `answerer` (default: `model`), a language-model-only
    load of the same checkpoint, e.g. in 4-bit, answers."""
    t0 = time.perf_counter()
    answerer = answerer or model
    if answerer.fingerprint != model.fingerprint:
        raise UserError("the answering model must be the compressing model's checkpoint")
    check_run_folder(cfg.out, cfg.caches)
    cfg.out.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(cfg.out, "another vococli eval is writing this run folder; wait for it to finish or "
                       "choose another --out")
    try:
        return run_locked(InProcess(model, answerer, cfg, notice), items, cfg, annotations, fmt, on_video, on_item,
                          t0)
    finally:
        lock.release()


def run_locked(backend, items: list[QAItem], cfg: EvalConfig, annotations: list[Path], fmt: str, on_video,
               on_item, t0: float) -> EvalSummary:
    """The run in a folder this process holds: what is done, what to ask again, then every
    video's lines as `backend` (InProcess, or eval/ray_run.py's workers) answers them."""
    record = backend.record(annotations, fmt)
    run_file, pred_file = cfg.out / RUN_FILE, cfg.out / PREDICTIONS
    if run_file.exists():
        check_same_run(run_file, record)
    elif pred_file.exists():
        raise UserError(f"{pred_file}: predictions without a {RUN_FILE}; choose a new --out")
    rows = read_predictions(pred_file, repair=True)
    kept, again = [], []
    for r in rows:
        retry = "error" in r and (cfg.retry_errors or may_have_gone_away(r, cfg.videos, cfg.dataset))
        (again if retry else kept).append(r)
    if again:
        rows = kept
        _machine_problems(lambda: rewrite_predictions(pred_file, rows), f"writing {pred_file}")
    _machine_problems(lambda: _write_record(run_file, record), f"writing {run_file}")
    done = {str(r.get("id")) for r in rows}
    failed = {str(r.get("id")) for r in rows if "error" in r}
    todo = [it for it in items if it.id not in done]
    summary = EvalSummary(len(items), len(items) - len(todo), sum(it.id in failed for it in items), 0, 0, 0, 0, 0.0,
                          retried=len(again))
    log = _machine_problems(lambda: PredictionLog(pred_file), f"opening {pred_file}")

    def count(n_answered: int = 0, n_errors: int = 0) -> None:
        summary.answered += n_answered
        summary.errors += n_errors
        if on_item:
            on_item(summary.already_done + summary.answered + summary.errors, len(items))

    def fail(q: QAItem, base: dict, error: str, kind: str) -> None:
        log.write(error_line(q, base, error, kind))
        summary.first_error = summary.first_error or error
        count(n_errors=1)

    try:
        count()
        for q in [it for it in todo if it.problem]:  # entries that cannot be asked: no video is opened
            fail(q, {"video": q.video}, q.problem, "question")
        groups = group_by_video([it for it in todo if not it.problem])
        for v_i, (name, rows, stats) in enumerate(backend.answer_groups(groups)):
            if on_video:
                on_video(v_i, len(groups))
            summary.videos += 1
            for row in rows:
                log.write(row)
                if "error" in row:
                    summary.first_error = summary.first_error or row["error"]
                count(n_answered="error" not in row, n_errors="error" in row)
            summary.frames_compressed += stats.computed
        if on_video:
            on_video(len(groups), len(groups))
    finally:
        log.close()
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


@dataclass
class VideoStats:
    computed: int = 0  # frames compressed for this video (0 when its cache existed)


class InProcess:
    """Answers every video in this process, one after another (the default of `eval`)."""

    def __init__(self, model: VocoModel, answerer: VocoModel, cfg: EvalConfig, notice):
        self.model, self.answerer, self.cfg, self.notice = model, answerer, cfg, notice

    def record(self, annotations: list[Path], fmt: str) -> dict:
        return run_record(self.model, self.cfg, annotations, fmt, self.answerer)

    def answer_groups(self, groups):
        for name, questions in groups:
            stats = VideoStats()
            yield name, answer_video(self.model, self.answerer, name, questions, self.cfg, stats, self.notice), stats


def error_line(q: QAItem, base: dict, error: str, kind: str, **extra) -> dict:
    """The predictions.jsonl line of a question that could not be answered."""
    return {"id": q.id, **base, "question": printable(q.question), "answer": printable(q.answer),
            **({"type": q.type} if q.type else {}), "error": error, "error_kind": kind, **extra}


def answer_video(model: VocoModel, answerer: VocoModel, name: str, questions: list[QAItem], cfg: EvalConfig,
                 stats: VideoStats, notice) -> Iterator[dict]:
    """The predictions.jsonl lines of one video's questions, each as soon as it is answered (or
    every question's error line when the video cannot be used). Machine problems are raised."""
    session, base, error = _open_video(model, answerer, name, questions, cfg, stats, notice)
    if error is not None:  # the video itself is missing or unusable: its questions' error
        state = video_state(cfg.videos, name, cfg.dataset)
        for q in questions:
            yield error_line(q, base, error, "video", video_state=state)
        return
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens)
    for q in questions:
        session.reset()
        ans = _machine_problems(lambda: session.ask(q.question + cfg.suffix, gen, evidence=cfg.evidence),
                                f"answering {q.id!r}")
        yield {"id": q.id, **base, "question": q.question, "answer": q.answer, "pred": ans.text,
               **({"type": q.type} if q.type else {}), "answer_s": round(ans.total_s, 4),
               "ttft_s": round(ans.time_to_first_token_s, 4), "answer_tokens": len(ans.token_ids),
               **({"evidence": ans.evidence.top()} if ans.evidence is not None else {})}


def _open_video(model, answerer, name: str, questions: list[QAItem], cfg: EvalConfig, stats: VideoStats,
                notice) -> tuple[Session | None, dict, str | None]:
    """The session over the video's cache (compressed first when needed), the fields its lines
    share, and the video's own error (None when it opened). Machine problems are raised."""
    base: dict = {"video": name}
    try:
        path = find_video(cfg.videos, name, cfg.dataset)
        tc = time.perf_counter()
        cache, computed = _machine_problems(lambda: compressed_cache(model, path, cfg.caches, cfg.sampling,
                                                                     cfg.cache_dtype, cfg.batch_size, notice=notice),
                                            f"compressing {name}")
        stats.computed += computed
        base["compress_s"] = round(time.perf_counter() - tc, 3)
        reserve = max(prompt_length(model, q.question + cfg.suffix) for q in questions) + cfg.max_new_tokens
        session = _machine_problems(lambda: open_for_answering(cache, answerer, reserve, cfg.decode, subsample=True,
                                                               notice=notice), f"loading the cache of {name}")
        base["frames"] = session.video.n_frames
        return session, base, None
    except EnvironmentProblem:
        raise
    except UserError as e:
        return None, base, str(e)
    except (OSError, RuntimeError, ValueError) as e:  # a decoder's own error about this file
        return None, base, f"{name}: {type(e).__name__}: {e}"


def _machine_problems(work: Callable, what: str):
    """Run `work()`, turning a full disk or exhausted memory into an EnvironmentProblem that stops
    the run (nothing is recorded for the question in hand; a rerun asks it)."""
    try:
        return work()
    except EnvironmentProblem:
        raise
    except (MemoryError, torch.OutOfMemoryError) as e:
        raise EnvironmentProblem(f"out of memory while {what}; nothing was recorded for it: free memory (or lower "
                                 f"--batch-size) and run the same command to go on ({type(e).__name__})") from None
    except OSError as e:
        if e.errno in NO_ROOM:
            raise EnvironmentProblem(f"no room on the disk while {what} ({e.strerror}); nothing was recorded for it: "
                                     "make room and run the same command to go on") from None
        raise


def _write_record(run_file: Path, record: dict) -> None:
    tmp = run_file.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, run_file)
    finally:
        tmp.unlink(missing_ok=True)

