"""Batch answering for a video QA benchmark: compress each video once, ask all its questions.

A run folder holds:
- `run.json`: what is needed to reproduce the run (model fingerprint, K, sampling, prompt suffix,
  chat template hash, generation settings, package versions, annotation file hashes);
- `predictions.jsonl`: one JSON object per question, appended and flushed to disk as each answer
  is made, so a killed run loses at most the question in flight and a rerun skips what is done;
- `caches/` (unless a shared cache folder is given): one .voco cache per video, keyed by the
  video's identity, the model fingerprint, K and the sampling, reused across runs.
A video that is missing or cannot be decoded gives each of its questions a line with an `error`
field and no `pred`; the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from vococli.answer.opening import open_for_answering
from vococli.answer.prompts import prompt_length
from vococli.answer.session import GenerationConfig
from vococli.cache.meta import video_identity
from vococli.compress.pipeline import compress_video
from vococli.families.loading import DTYPE_NAMES
from vococli.errors import UserError, check_output_folder
from vococli.eval.record import RUN_FILE, check_same_run, run_record
from vococli.families.base import VocoModel
from vococli.eval.formats import SHORT_ANSWER_SUFFIX, QAItem, find_video
from vococli.video.sampling import Sampling

PREDICTIONS = "predictions.jsonl"
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
    retry_errors: bool = False  # ask again the questions whose video failed before

    @property
    def caches(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.out / "caches"


@dataclass
class EvalSummary:
    questions: int  # in the annotation selection
    already_done: int  # answered (or failed) by an earlier run
    earlier_errors: int  # of already_done, recorded as errors (--retry-errors asks them again)
    answered: int  # answered by this run
    errors: int  # questions this run recorded as errors
    videos: int  # videos whose questions this run answered (or failed)
    frames_compressed: int  # frames this run compressed (0 when every cache already existed)
    seconds: float


def read_predictions(path: Path, repair: bool = False, raw: bytes | None = None) -> list[dict]:
    """The lines of predictions.jsonl (or of `raw`, its bytes read by the caller). A torn last
    line (the process died mid-write) is dropped, and with `repair` cut from the file; a broken
    line elsewhere is an error."""
    if raw is None:
        if not path.exists():
            return []
        raw = path.read_bytes()
    keep = len(raw)
    if raw and not raw.endswith(b"\n"):
        keep = raw.rfind(b"\n") + 1
        if repair:
            with open(path, "r+b") as f:
                f.truncate(keep)
    rows = []
    for n, line in enumerate(raw[:keep].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path}: line {n} is not JSON; the file is damaged") from None
    return rows


def cache_key(video: Path, model: VocoModel, sampling: Sampling, cache_dtype: str = "auto") -> str:
    ident = video_identity(video)
    key = {"size": ident["size"], "sha256_ends": ident["sha256_ends"], "model": model.fingerprint,
           "k": model.layout.k, "sampling": sampling.to_dict()}
    if cache_dtype != "auto":  # keeps the names of caches made before the option existed
        key["storage"] = cache_dtype
    if model.dtype != torch.float32:  # a float32 (CPU) and a bf16 (GPU) run can share a cache folder
        key["dtype"] = DTYPE_NAMES[model.dtype]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class PredictionLog:
    """Append-only predictions.jsonl: every line is on disk before the next question starts."""

    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def group_by_video(items: list[QAItem]) -> list[tuple[str, list[QAItem]]]:
    groups: dict[str, list[QAItem]] = {}
    for it in items:
        groups.setdefault(it.video, []).append(it)
    return list(groups.items())


def check_run_folder(cfg: EvalConfig) -> None:
    """`cfg.out` is new, empty (but for its cache folder), or a run folder of its own."""
    check_output_folder(cfg.out, RUN_FILE, "an eval run folder", own=(cfg.caches.name,))


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
    check_run_folder(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    record = run_record(model, cfg, annotations, fmt, answerer)
    run_file, pred_file = cfg.out / RUN_FILE, cfg.out / PREDICTIONS
    if run_file.exists():
        check_same_run(run_file, record)
    elif pred_file.exists():
        raise UserError(f"{pred_file}: predictions without a {RUN_FILE}; choose a new --out")
    rows = read_predictions(pred_file, repair=True)
    if cfg.retry_errors and any("error" in r for r in rows):
        rows = [r for r in rows if "error" not in r]
        tmp = pred_file.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, pred_file)
    tmp = run_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, run_file)
    done = {str(r.get("id")) for r in rows}
    failed = {str(r.get("id")) for r in rows if "error" in r}
    todo = [it for it in items if it.id not in done]
    groups = group_by_video(todo)
    n_done0 = len(items) - len(todo)
    summary = EvalSummary(len(items), n_done0, sum(it.id in failed for it in items), 0, 0, 0, 0, 0.0)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens)
    log = PredictionLog(pred_file)
    try:
        if on_item:
            on_item(n_done0, len(items))
        for v_i, (name, questions) in enumerate(groups):
            if on_video:
                on_video(v_i, len(groups))
            summary.videos += 1
            base = {"video": name}
            try:
                path = find_video(cfg.videos, name, cfg.dataset)
                tc = time.perf_counter()
                cache, computed = _compressed(model, path, cfg)
                summary.frames_compressed += computed
                base["compress_s"] = round(time.perf_counter() - tc, 3)
                reserve = max(prompt_length(model, q.question + cfg.suffix) for q in questions) + cfg.max_new_tokens
                session = open_for_answering(cache, answerer, reserve, cfg.decode, subsample=True, notice=notice)
                base["frames"] = session.video.n_frames
            except (UserError, OSError, RuntimeError, ValueError) as e:  # this video is unusable; go on
                if not isinstance(e, UserError):
                    e = f"{name}: {type(e).__name__}: {e}"
                for q in questions:
                    log.write({"id": q.id, **base, "question": q.question, "answer": q.answer,
                               **({"type": q.type} if q.type else {}), "error": str(e)})
                    summary.errors += 1
                    if on_item:
                        on_item(n_done0 + summary.answered + summary.errors, len(items))
                continue
            for q in questions:
                session.reset()
                ans = session.ask(q.question + cfg.suffix, gen)
                log.write({"id": q.id, **base, "question": q.question, "answer": q.answer, "pred": ans.text,
                           **({"type": q.type} if q.type else {}), "answer_s": round(ans.total_s, 4),
                           "ttft_s": round(ans.time_to_first_token_s, 4), "answer_tokens": len(ans.token_ids)})
                summary.answered += 1
                if on_item:
                    on_item(n_done0 + summary.answered + summary.errors, len(items))
        if on_video:
            on_video(len(groups), len(groups))
    finally:
        log.close()
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def _compressed(model: VocoModel, path: Path, cfg: EvalConfig) -> tuple[Path, int]:
    """The video's cache folder, compressed (or finished) first when needed; also the number of
    frames compressed now."""
    cfg.caches.mkdir(parents=True, exist_ok=True)
    cache = cfg.caches / f"{path.stem}-{cache_key(path, model, cfg.sampling, cfg.cache_dtype)}.voco"
    res = compress_video(model, path, cache, cfg.sampling, batch_size=cfg.batch_size, cache_dtype=cfg.cache_dtype,
                         notice=lambda s: None)
    return cache, res.computed
