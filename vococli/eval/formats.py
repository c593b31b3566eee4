"""Video QA annotation files -> one list of questions, whatever format the benchmark ships in.

Formats (field names exact):
- `qa-pair`: Video-ChatGPT / Video-LLaVA / official ActivityNet-QA, two files:
  questions `[{"video_name", "question", "question_id"}]` and answers
  `[{"answer", "type", "question_id"}]`, paired by `question_id`;
- `llama-vid`: one file `[{"video_id", "question", "answer", "id"}]`, `video_id` a file stem;
- `original`: the original MSVD-QA / MSRVTT-QA files `[{"answer", "id", "question", "video_id": int}]`;
  MSVD maps ids through `youtube_mapping.txt` (`<clip_name> vid<N>`), MSRVTT files are `video<N>`;
- `chatunivi`: one file `[{"question", "video_name", "answer"}]` (ids are the entry numbers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vococli.errors import UserError
from vococli.eval.items import QAItem, make_item

DATASETS = ("msvd", "msrvtt", "activitynet")
FORMATS = ("qa-pair", "llama-vid", "original", "chatunivi")
# ActivityNet-QA `type` codes
ACTIVITYNET_TYPES = {0: "motion", 1: "spatial", 2: "temporal", 3: "yes/no", 4: "color", 5: "object",
                     6: "location", 7: "number", 8: "other"}
# MSVD-QA and MSRVTT-QA report accuracy by the question word
WH_WORDS = ("what", "who", "how", "when", "where")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".jpg", ".jpeg", ".png")  # images: one frame
# what MSVD-QA, MSRVTT-QA and ActivityNet-QA evaluations append to each question (short answers)
SHORT_ANSWER_SUFFIX = " Answer the question using a single word or phrase."


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_list(path: Path) -> list:
    if not path.is_file():
        raise UserError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to read (more than about 1000 levels); refused") from None
    if not isinstance(data, list) or not data:
        raise UserError(f"{path}: expected a non-empty JSON list of questions")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise UserError(f"{path}: entry {i} is not a JSON object")
    return data


def _need(path: Path, data: list, fields: tuple[str, ...]) -> None:
    for i, entry in enumerate(data):
        missing = [f for f in fields if f not in entry]
        if missing:
            raise UserError(f"{path}: entry {i} lacks {', '.join(repr(m) for m in missing)}")


def detect_format(entry: dict, two_files: bool) -> str:
    """The format of a file from the fields of its first entry."""
    if two_files:
        return "qa-pair"
    if "video_id" in entry:
        return "original" if isinstance(entry["video_id"], int) else "llama-vid"
    if "video_name" in entry and "answer" in entry:
        return "chatunivi"
    if "question_id" in entry and "video_name" in entry:
        raise UserError("this is a questions file without answers: pass the answers file too "
                        "(--questions test_q.json --answers test_a.json)")
    raise UserError(f"unknown annotation format (fields: {', '.join(sorted(entry))}); "
                    f"pass --format, one of {', '.join(FORMATS)}")


def question_type(dataset: str, question: str, raw_type) -> str | None:
    """A named type from the file wins; ActivityNet codes get their names; otherwise MSVD/MSRVTT
    questions are typed by their question word (the numeric code some conversions carry is not a type)."""
    if isinstance(raw_type, str) and raw_type.strip() and not raw_type.strip().isdigit():
        return raw_type.strip()
    if dataset == "activitynet" and raw_type is not None:
        try:
            return ACTIVITYNET_TYPES[int(raw_type)]
        except (ValueError, KeyError):
            return str(raw_type)
    if dataset in ("msvd", "msrvtt"):
        words = question.strip().lower().split()
        return words[0] if words and words[0] in WH_WORDS else "other"
    return None if raw_type is None else str(raw_type)


def read_msvd_mapping(path: Path) -> dict[int, str]:
    """`youtube_mapping.txt`: lines `<clip_name> vid<N>` -> {N: clip_name}."""
    if not path.is_file():
        raise UserError(f"{path}: MSVD id mapping not found (the original MSVD-QA files number videos "
                        "vid1..vid1970; pass --mapping youtube_mapping.txt)")
    mapping = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].startswith("vid") or not parts[1][3:].isdigit():
            raise UserError(f"{path}: line {n} is not '<clip_name> vid<N>'")
        mapping[int(parts[1][3:])] = parts[0]
    return mapping


def read_questions(dataset: str, qa: Path | None = None, answers: Path | None = None,
                   questions: Path | None = None, fmt: str | None = None,
                   mapping: Path | None = None) -> tuple[list[QAItem], str]:
    """Read a benchmark's annotations into QAItems (ids unique, order kept) and name their format."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if qa is not None and (questions is not None or answers is not None):
        raise UserError("give either --qa FILE or --questions and --answers, not both")
    two_files = questions is not None or answers is not None
    if two_files and (questions is None or answers is None):
        raise UserError("--questions and --answers go together")
    if not two_files and qa is None:
        raise UserError("no annotations: pass --qa FILE, or --questions and --answers")
    main = questions if two_files else qa
    data = _load_list(main)
    fmt = fmt or detect_format(data[0], two_files)
    if fmt == "qa-pair":
        if not two_files:
            raise UserError("--format qa-pair needs --questions and --answers")
        items = _read_pair(dataset, questions, data, answers)
    elif two_files:
        raise UserError(f"--format {fmt} is a single file: pass it with --qa")
    elif fmt == "llama-vid":
        _need(main, data, ("video_id", "question", "answer", "id"))
        items = [_item(dataset, i, e["id"], e["video_id"], e) for i, e in enumerate(data)]
    elif fmt == "original":
        _need(main, data, ("video_id", "question", "answer", "id"))
        names = _original_names(dataset, main, data, mapping)
        items = [_item(dataset, i, e["id"], names[i], e) for i, e in enumerate(data)]
    else:  # chatunivi
        _need(main, data, ("video_name", "question", "answer"))
        items = [_item(dataset, i, i, e["video_name"], e) for i, e in enumerate(data)]
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise UserError(f"{main}: question id {item.id!r} appears more than once")
        seen.add(item.id)
    return items, fmt


def _read_pair(dataset: str, qpath: Path, qdata: list, apath: Path) -> list[QAItem]:
    adata = _load_list(apath)
    _need(qpath, qdata, ("video_name", "question", "question_id"))
    _need(apath, adata, ("answer", "question_id"))
    by_id: dict[str, dict] = {}
    for e in adata:
        qid = str(e["question_id"])
        if qid in by_id:
            raise UserError(f"{apath}: question_id {qid!r} appears more than once")
        by_id[qid] = e
    qids = [str(e["question_id"]) for e in qdata]
    unanswered = [q for q in qids if q not in by_id]
    extra = sorted(set(by_id) - set(qids))
    if unanswered or extra:
        parts = []
        if unanswered:
            parts.append(f"{len(unanswered)} question(s) have no answer (first: {unanswered[0]!r})")
        if extra:
            parts.append(f"{len(extra)} answer(s) have no question (first: {extra[0]!r})")
        raise UserError(f"{qpath} and {apath} do not pair by question_id: {'; '.join(parts)}")
    return [_item(dataset, i, e["question_id"], e["video_name"],
                  {"question": e["question"], "answer": by_id[qid]["answer"], "type": by_id[qid].get("type")})
            for i, (qid, e) in enumerate(zip(qids, qdata))]


def _item(dataset: str, index: int, raw_id, video, entry: dict) -> QAItem:
    question = entry["question"]
    kind = question_type(dataset, question, entry.get("type")) if isinstance(question, str) else None
    return make_item(index, raw_id, video, question, entry["answer"], kind)


def _original_names(dataset: str, path: Path, data: list, mapping: Path | None) -> list[str]:
    if dataset == "msrvtt":
        return [f"video{e['video_id']}" for e in data]
    if dataset == "msvd":
        names = read_msvd_mapping(mapping if mapping is not None else path.parent / "youtube_mapping.txt")
        missing = sorted({e["video_id"] for e in data if e["video_id"] not in names})
        if missing:
            raise UserError(f"{path}: video_id {missing[0]} is not in the MSVD mapping ({len(missing)} ids missing)")
        return [names[e["video_id"]] for e in data]
    return [str(e["video_id"]) for e in data]


def find_video(videos: Path, name: str, dataset: str) -> Path:
    """The file for an annotation's video name inside `videos`; never a path outside it.

    Tries the name as given, then each usual extension, then ActivityNet's `v_` prefix (added or
    removed). Raises UserError (one line) when the name leaves the folder or nothing is found.
    The folders a name goes through are resolved (symbolic links followed) and must stay inside
    `videos`; the file itself may be a link, as in a folder of links to the videos' storage
    (links placed by whoever fills the folder, not by an annotation file).
    """
    if not name or Path(name).is_absolute() or "\\" in name or any(p == ".." for p in Path(name).parts):
        raise UserError(f"video name {name!r} leaves the videos folder; refused")
    stems = [name]
    if dataset == "activitynet" or name.startswith("v_"):
        stems.append(name[2:] if name.startswith("v_") else f"v_{name}")
    candidates = []
    for stem in stems:
        candidates.append(stem)
        candidates += [stem + ext for ext in VIDEO_EXTENSIONS]
    root = videos.resolve()
    for c in candidates:
        path = videos / c  # lexically inside: the name has no '..' and is relative
        if path.is_file():
            if not path.parent.resolve().is_relative_to(root):
                raise UserError(f"video name {name!r} leads out of the videos folder through a symbolic link "
                                f"({path.parent} -> {path.parent.resolve()}); refused")
            return path
    raise UserError(f"video {name!r} not found in {videos} (tried {', '.join(VIDEO_EXTENSIONS)}"
                    f"{' and the v_ prefix' if len(stems) > 1 else ''})")
