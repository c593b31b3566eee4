"""predictions.jsonl: one JSON line per question, appended and flushed to disk as it is made;
and the run folder that holds it beside run.json (no torch needed: the command line checks the
folder before anything heavy is imported).

A line holds the answer (`pred`) or the question's own error (`error`, with `error_kind`):
- `question`: the annotation entry cannot be asked (null, an object, a lone surrogate ...);
- `video`: the video is missing or cannot be decoded (`video_state` records the file as it was).
Problems of the machine (a full disk, memory, another process) are never written as a line: the
run stops, and a rerun asks those questions. A rerun also asks again every question whose error
may have gone away: a video that is now there or has changed, and lines of earlier versions
that did not say what kind of error they were.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from vococli.errors import EnvironmentProblem, UserError, check_output_folder
from vococli.eval.formats import find_video

PREDICTIONS = "predictions.jsonl"
RUN_FILE = "run.json"  # what reproduces the run (eval/record.py)
NO_ROOM = {errno.ENOSPC, errno.EDQUOT}


def check_run_folder(out: Path, caches: Path) -> None:
    """`out` is new, empty (but for its cache folder `caches`), or a run folder of its own."""
    check_output_folder(out, RUN_FILE, "an eval run folder", own=(caches.name,))


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
    for n, line in enumerate(raw[:keep].decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path}: line {n} is not JSON; the file is damaged") from None
    return rows


def rewrite_predictions(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


class PredictionLog:
    """Append-only predictions.jsonl: every line is on disk before the next question starts."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        try:
            self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            if e.errno in NO_ROOM:
                raise EnvironmentProblem(f"{self.path}: cannot be written ({e.strerror}); the answers before are "
                                         "kept: make room and run the same command to go on") from None
            raise

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:  # the last flush failed on a full disk: the rerun cuts the torn line
            pass


def video_state(videos: Path, name: str, dataset: str) -> dict | None:
    """The video file as it is now (None: not found), to tell later whether it changed."""
    try:
        path = find_video(videos, name, dataset)
        st = path.stat()
    except (UserError, OSError):
        return None
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def may_have_gone_away(row: dict, videos: Path, dataset: str) -> bool:
    """Whether the error of this line could come out otherwise now."""
    kind = row.get("error_kind")
    if kind == "question":
        return False  # the annotation file is the same (run.json holds its hash)
    if kind == "video":
        return video_state(videos, row.get("video", ""), dataset) != row.get("video_state")
    return True  # an earlier version's line: it may have come from the machine
