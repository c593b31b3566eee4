"""Accuracy of a checkpoint on an MSVD-style QA file, with the batched two-stage forward.

`test_qa.json` entries (`video_id`, `question`, `answer`, optional `type`) refer to
`<folder>/videos/<video_id>.mp4`. Every video is compressed once in the chosen mode; its
questions are answered greedily and compared with the answer after lower-casing and stripping
(exact match). Used by `vococli experiment` and for model cards; it reads the same frames
(`fps`, `max_frames`) as `compress` and lays them out as `ask` does.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from vococli.answer.prompts import render_prompt
from vococli.errors import UserError
from vococli.eval.judge import normalise
from vococli.families.base import VocoModel
from vococli.train.data import FrameStore, MediaItem
from vococli.video.sampling import Sampling
from vococli.train.forward import greedy_answers, encode_frames


@dataclass
class QAScore:
    correct: int = 0
    total: int = 0
    by_type: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    predictions: list[dict] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def to_dict(self) -> dict:
        return {"accuracy": round(self.accuracy, 4), "correct": self.correct, "total": self.total,
                "by_type": {t: {"accuracy": round(c / n, 4), "total": n} for t, (c, n) in sorted(self.by_type.items())}}


def read_qa(folder: Path, limit: int | None = None) -> list[dict]:
    qa_file = Path(folder) / "test_qa.json"
    if not qa_file.is_file():
        raise UserError(f"{qa_file}: QA file not found")
    entries = json.loads(qa_file.read_text())
    return entries[:limit] if limit else entries


@torch.no_grad()
def score_qa(model: VocoModel, folder: Path, compressor: str = "voco", module=None, fps: float = 1.0,
             max_frames: int | None = None, limit: int | None = None, videos_per_batch: int = 16,
             max_new_tokens: int = 6, progress: Callable[[int, int], None] | None = None) -> QAScore:
    """Greedy exact-match accuracy on `folder/test_qa.json` (overall and per question type)."""
    folder = Path(folder)
    entries = read_qa(folder, limit)
    by_video: dict[str, list[dict]] = defaultdict(list)
    for e in entries:
        by_video[e["video_id"]].append(e)
    store = FrameStore(model.image, Sampling(fps=fps, max_frames=max_frames), keep=False)
    tok = model.tokenizer
    score = QAScore()
    vids = list(by_video)
    for s in range(0, len(vids), videos_per_batch):
        group = vids[s:s + videos_per_batch]
        pixels = [store.pixels(MediaItem(folder / "videos" / f"{v}.mp4", True)) for v in group]
        state = encode_frames(model, torch.cat(pixels).to(model.device, model.dtype),
                              [p.shape[0] for p in pixels], compressor, module)
        asked = [(i, e) for i, v in enumerate(group) for e in by_video[v]]
        prompts = [tok(render_prompt(model, [{"role": "user", "content": e["question"]}]),
                       add_special_tokens=False)["input_ids"] for _, e in asked]
        outs = greedy_answers(model, state, prompts, [i for i, _ in asked], max_new_tokens)
        for (_, e), ids in zip(asked, outs):
            pred = tok.decode(ids, skip_special_tokens=True).strip()
            ok = normalise(pred) == normalise(e["answer"])
            score.correct += ok
            score.total += 1
            t = e.get("type", "all")
            score.by_type[t][0] += ok
            score.by_type[t][1] += 1
            score.predictions.append({"id": e.get("id"), "question": e["question"], "answer": e["answer"],
                                      "type": t, "pred": pred, "correct": bool(ok)})
        if progress:
            progress(min(s + videos_per_batch, len(vids)), len(vids))
    return score
