"""One question of a benchmark (QAItem), built from whatever an annotation entry holds.

Annotation files come from many hands: a field may be null, an object, a list, or text with a
lone surrogate that no file can store. Such an entry becomes an item with a `problem` (recorded
as that question's error, with the reason) instead of being asked as the text "None" or as a
repr, or stopping the whole run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class QAItem:
    id: str
    video: str  # name as the annotation gives it (a file stem, usually)
    question: str
    answer: str
    type: str | None = None
    problem: str | None = None  # why this entry cannot be asked (None: it can)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def printable(value) -> str:
    """`value` as text that any UTF-8 file can hold (lone surrogates escaped), for error rows."""
    text = value if isinstance(value, str) else repr(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:500]


def _text_problem(value, what: str, numbers: bool = False) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float) if numbers else str):
        kind = "null" if value is None else type(value).__name__
        return f"its {what} is {kind}, not text"
    if isinstance(value, str):
        if not value.strip():
            return f"its {what} is empty"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"its {what} holds a lone surrogate ({printable(value)[:60]!r}), which is not text"
    return None


def make_item(index: int, raw_id, video, question, answer, type_name) -> QAItem:
    """The item of annotation entry `index`; an unusable entry gets a `problem` and a stand-in id."""
    problem = None
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or _text_problem(str(raw_id), "id"):
        problem = f"its id {printable(raw_id)} is not a string or a whole number"
        item_id = f"<entry {index}>"
    else:
        item_id = str(raw_id)
    problem = problem or _text_problem(video, "video name", numbers=True) or _text_problem(question, "question") \
        or _text_problem(answer, "answer", numbers=True)
    if problem:
        return QAItem(item_id, printable(video), printable(question), printable(answer), problem=f"entry {index}: {problem}")
    return QAItem(item_id, str(video), question, str(answer), type_name)
