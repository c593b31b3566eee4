"""Scores of a run folder: overall and per question type, with a bar chart.

Questions whose video failed (an `error` line) are counted apart and never as wrong answers;
so are LLM judgements that failed after their retries. Results go to `scores.json` (one entry
per judge, so exact and LLM scores of one run sit side by side) and `accuracy_<judge>.png`.
Each entry records the SHA-256 of the predictions it scored; when the predictions change (the
run went on), entries of other judges that scored the old predictions are dropped with their
charts, so scores.json never mixes scores of different predictions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vococli.choices import JudgeName, check
from vococli.errors import UserError
from vococli.eval.predictions import PREDICTIONS, RUN_FILE, read_predictions
from vococli.eval.judge import JudgeConfig, JudgementCache, LLMJudge, contains_match, exact_match

SCORES_FILE = "scores.json"
JUDGEMENTS_FILE = "judgements.jsonl"


@dataclass
class Tally:
    correct: int = 0  # exact/contains: matches; llm: "yes"
    wrong: int = 0  # exact/contains: mismatches; llm: "no"
    errors: int = 0  # no prediction: the video was missing or unreadable
    failed: int = 0  # llm only: the judgement could not be obtained
    score_sum: int = 0  # llm only: sum of 0-5 scores

    @property
    def judged(self) -> int:
        return self.correct + self.wrong

    @property
    def questions(self) -> int:
        return self.judged + self.errors + self.failed

    def to_dict(self, llm: bool) -> dict:
        d = {"accuracy": round(self.correct / self.judged, 4) if self.judged else None,
             "correct": self.correct, "judged": self.judged, "errors": self.errors,
             # the share of questions that got an answer: accuracy is over those alone
             "answered": round((self.questions - self.errors) / self.questions, 4) if self.questions else None}
        if llm:
            d["failed_judgements"] = self.failed
            d["score"] = round(self.score_sum / self.judged, 3) if self.judged else None
        return d


@dataclass
class RunScores:
    judge: str
    overall: Tally = field(default_factory=Tally)
    by_type: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    judge_models: dict[str, int] = field(default_factory=dict)  # reported model name -> judgements
    failure: str = ""  # llm only: what went wrong with the first judgement that failed
    predictions_sha256: str = ""

    def tallies(self, row: dict) -> tuple[Tally, Tally]:
        """The overall tally and the tally of the row's question type."""
        return self.overall, self.by_type[row.get("type") or "all"]

    def to_dict(self) -> dict:
        llm = self.judge == "llm"
        d = {"judge": self.judge, "overall": self.overall.to_dict(llm),
             "by_type": {t: v.to_dict(llm) for t, v in sorted(self.by_type.items())}}
        if llm:
            d["judge_models_reported"] = self.judge_models
            if self.failure:
                d["first_failure"] = self.failure
        d["predictions_sha256"] = self.predictions_sha256
        return d


def latest_rows(run: Path) -> tuple[list[dict], str]:
    """The last line of every question, and the SHA-256 of the predictions file they came from."""
    if not (run / RUN_FILE).exists() or not (run / PREDICTIONS).exists():
        raise UserError(f"{run}: not an eval run folder (no {RUN_FILE} and {PREDICTIONS})")
    raw = (run / PREDICTIONS).read_bytes()  # one read: a run still answering may append meanwhile
    by_id: dict[str, dict] = {}
    for row in read_predictions(run / PREDICTIONS, raw=raw):
        by_id[str(row.get("id"))] = row  # a later line for the same question wins
    return list(by_id.values()), hashlib.sha256(raw).hexdigest()


def score_run(run: Path, judge: str, judge_cfg: JudgeConfig | None = None,
              on_progress: Callable[[int, int], None] | None = None) -> RunScores:
    """Score `run` with `judge` and write scores.json and the per-type chart."""
    check(judge, JudgeName, "judge")
    rows, digest = latest_rows(run)
    scored = [r for r in rows if "pred" in r]
    res = RunScores(judge, predictions_sha256=digest)
    if judge == "llm":
        if judge_cfg is None or not judge_cfg.url or not judge_cfg.model:
            raise UserError("--judge llm needs --judge-url and --judge-model")
        llm = LLMJudge(judge_cfg, JudgementCache(run / JUDGEMENTS_FILE))
        try:
            verdicts = llm.judge_all(scored, on_done=lambda n: on_progress(n, len(scored)) if on_progress else None)
        finally:
            llm.close()
        failures = [j.error for j in verdicts if j.verdict is None]
        if scored and len(failures) == len(scored):
            raise UserError(f"{judge_cfg.url}: all {len(scored)} judgements failed ({failures[0]}); nothing scored")
        res.failure = failures[0] if failures else ""
        for row, j in zip(scored, verdicts):
            for t in res.tallies(row):
                if j.verdict is None:
                    t.failed += 1
                else:
                    t.correct += j.verdict == "yes"
                    t.wrong += j.verdict == "no"
                    t.score_sum += j.score
            if j.model:
                res.judge_models[j.model] = res.judge_models.get(j.model, 0) + 1
    else:
        match = exact_match if judge == "exact" else contains_match
        for row in scored:
            ok = match(str(row["answer"]), str(row["pred"]))
            for t in res.tallies(row):
                t.correct += ok
                t.wrong += not ok
    for row in rows:
        if "pred" not in row:
            for t in res.tallies(row):
                t.errors += 1
    write_scores(run, res)
    return res


def write_scores(run: Path, res: RunScores) -> None:
    path = run / SCORES_FILE
    scores = {}
    if path.exists():
        try:
            scores = json.loads(path.read_text())
        except json.JSONDecodeError:
            scores = {}
    # drop what scored other predictions; an entry written before entries carried the hash is kept
    for judge in [j for j, d in scores.items() if not isinstance(d, dict)
                  or d.get("predictions_sha256", res.predictions_sha256) != res.predictions_sha256]:
        del scores[judge]
        (run / f"accuracy_{judge}.png").unlink(missing_ok=True)
    scores[res.judge] = res.to_dict()
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(scores, indent=2) + "\n")
    os.replace(tmp, path)
    write_chart(run / f"accuracy_{res.judge}.png", res)


def write_chart(path: Path, res: RunScores) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["overall"] + sorted(res.by_type)
    tallies = [res.overall] + [res.by_type[n] for n in names[1:]]
    acc = [100 * t.correct / t.judged if t.judged else 0.0 for t in tallies]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 1.5), 3.5), dpi=100)
    bars = ax.bar(names, acc, color=["#444"] + ["#4a7fb5"] * (len(names) - 1))
    for b, t in zip(bars, tallies):
        ax.annotate(f"{t.judged}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                    fontsize=7, color="#555")
    ax.set_ylabel(f"accuracy, % ({res.judge})")
    ax.set_ylim(0, 105)
    ax.set_title("accuracy by question type (number judged above each bar)", fontsize=9)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
