"""Deciding whether a predicted answer is right: exact match, containment, or an LLM judge.

The LLM judge follows the Video-ChatGPT protocol: a chat model sees the question, the correct
answer and the prediction, and returns a yes/no verdict and an integer score 0-5. It speaks the
OpenAI chat completions protocol to any compatible endpoint, caches every judgement on disk (a
re-score costs nothing), records the model name the endpoint reports, runs requests
concurrently, retries transport errors, HTTP 429/5xx and unparseable replies with exponential
backoff, and reports judgements that still fail as failed, never as "no".

Time is bounded whatever the endpoint does: each request has a total deadline (`timeout_s`, for
connecting, sending and the whole reply, so an endpoint that drips a byte at a time is cut off
too), and the whole scoring run has one (`deadline_s`); judgements not made by then are failed
(and made by the next scoring, the others coming from the cache).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vococli.choices import JudgeName, options
JUDGES = options(JudgeName)
PROMPT_VERSION = 1  # part of the cache key: a changed prompt is a new judgement
SYSTEM_PROMPT = (
    "You grade answers to questions about videos. Decide whether a predicted answer means the same "
    "as the correct answer. Synonyms, paraphrases and more specific but still correct wording count "
    "as a match; a different or contradictory meaning does not. Reply with JSON only."
)
USER_PROMPT = (
    "Question: {question}\nCorrect answer: {answer}\nPredicted answer: {pred}\n\n"
    'Reply with one JSON object: {{"pred": "yes" or "no" (does the prediction match the correct '
    'answer?), "score": an integer from 0 (no match at all) to 5 (the same meaning)}}'
)


def normalise(text: str) -> str:
    """Lower-case, trim, collapse spaces, drop a final full stop."""
    return " ".join(text.lower().strip().rstrip(".").split())


def exact_match(answer: str, pred: str) -> bool:
    return normalise(answer) == normalise(pred)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def contains_match(answer: str, pred: str) -> bool:
    """The answer's words appear, in order and contiguous, among the prediction's words
    (so "no" is not found in "not sure")."""
    a, p = _words(answer), _words(pred)
    if not a:
        return False
    return any(p[i:i + len(a)] == a for i in range(len(p) - len(a) + 1))


@dataclass(frozen=True)
class JudgeConfig:
    url: str  # base URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1
    model: str
    key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key (optional)
    workers: int = 8
    retries: int = 4  # attempts after the first
    backoff_s: float = 1.0  # first wait; doubles each retry (with jitter), at most 30 s
    timeout_s: float = 60.0  # total time one request may take, the whole reply included
    deadline_s: float | None = 3600.0  # total time of a scoring run's judgements (None: no limit)
    max_reply_bytes: int = 1 << 20

    def __post_init__(self):
        import math

        for name in ("timeout_s", "deadline_s", "backoff_s"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {v}")

    @property
    def endpoint(self) -> str:
        u = self.url.rstrip("/")
        return u if u.endswith("/chat/completions") else u + "/chat/completions"


@dataclass
class Judgement:
    verdict: str | None  # "yes" or "no"; None when the judgement failed
    score: int | None
    model: str | None  # the model name the endpoint reported
    error: str | None = None
    cached: bool = False


def parse_verdict(content: str) -> tuple[str, int] | None:
    """("yes"|"no", score 0-5) from a judge reply, or None when it cannot be read."""
    start, end = content.find("{"), content.rfind("}")
    if start < 0 or end <= start:
        return None
    blob = content[start:end + 1]
    obj = None
    try:
        obj = json.loads(blob)
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(blob)  # Python-dict style replies ({'pred': 'yes', ...}); literals only
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    if not isinstance(obj, dict):
        return None
    verdict = str(obj.get("pred", "")).strip().lower()
    try:
        score = float(obj.get("score"))
    except (TypeError, ValueError):
        return None
    if verdict not in ("yes", "no") or not score.is_integer() or not 0 <= score <= 5:
        return None
    return verdict, int(score)


def judgement_key(model: str, question: str, answer: str, pred: str) -> str:
    blob = json.dumps([PROMPT_VERSION, model, question, answer, pred], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class JudgementCache:
    """judgements.jsonl: one line per successful judgement, keyed by prompt version, model and texts."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.entries: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.entries[row["key"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn line from an interrupted run: that judgement is simply redone

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, verdict: str, score: int, model: str | None) -> None:
        row = {"key": key, "pred": verdict, "score": score, "model": model}
        with self.lock:
            self.entries[key] = row
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


class LLMJudge:
    def __init__(self, cfg: JudgeConfig, cache: JudgementCache, sleep: Callable[[float], None] = time.sleep):
        import httpx

        self.cfg, self.cache, self.sleep = cfg, cache, sleep
        key = os.environ.get(cfg.key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(timeout=cfg.timeout_s, headers=headers)
        self.run_deadline = None if cfg.deadline_s is None else time.monotonic() + cfg.deadline_s

    def close(self) -> None:
        self.client.close()

    def judge(self, question: str, answer: str, pred: str) -> Judgement:
        key = judgement_key(self.cfg.model, question, answer, pred)
        hit = self.cache.get(key)
        if hit is not None:
            return Judgement(hit["pred"], hit["score"], hit.get("model"), cached=True)
        body = {"model": self.cfg.model, "temperature": 0, "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_PROMPT.format(question=question, answer=answer, pred=pred)}]}
        problem = "no attempt"
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                wait = min(30.0, self.cfg.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                if self.run_deadline is not None and time.monotonic() + wait >= self.run_deadline:
                    break
                self.sleep(wait)
            if self._left() <= 0:
                problem = f"the scoring deadline ({self.cfg.deadline_s:g} s) passed; score again to go on"
                break
            verdict, problem, retry, reported = self._attempt(body)
            if verdict is not None:
                self.cache.put(key, verdict[0], verdict[1], reported)
                return Judgement(verdict[0], verdict[1], reported)
            if not retry:
                break
        return Judgement(None, None, None, error=problem)

    def _left(self) -> float:
        """Seconds left before the scoring run's deadline (inf without one)."""
        return float("inf") if self.run_deadline is None else self.run_deadline - time.monotonic()

    def _attempt(self, body: dict):
        """One request: (verdict or None, problem, worth retrying, reported model). It runs in a
        thread of its own and is given up at its deadline, whatever the endpoint is doing (a
        reply that never comes, or headers dripped a byte at a time)."""
        budget = min(self.cfg.timeout_s, self._left())
        end = time.monotonic() + budget
        result: list = []
        worker = threading.Thread(target=lambda: result.append(self._request(body, budget, end)), daemon=True)
        worker.start()
        worker.join(budget + 0.25)
        if not result:
            return None, f"no complete reply within {budget:.3g} s", True, None
        return result[0]

    def _request(self, body: dict, budget: float, end: float):
        import httpx

        try:
            with self.client.stream("POST", self.cfg.endpoint, json=body, timeout=httpx.Timeout(budget)) as r:
                data = bytearray()
                for chunk in r.iter_bytes():
                    data += chunk
                    if time.monotonic() > end:  # a reply dripped slowly: stop reading it
                        return None, f"no complete reply within {budget:.3g} s", True, None
                    if len(data) > self.cfg.max_reply_bytes:
                        return None, f"reply larger than {self.cfg.max_reply_bytes} bytes", False, None
        except httpx.TimeoutException:
            return None, f"no complete reply within {budget:.3g} s", True, None
        except httpx.HTTPError as e:
            return None, f"{type(e).__name__}: {e}", True, None
        if r.status_code != 200:
            retry = r.status_code == 429 or r.status_code >= 500
            return None, f"HTTP {r.status_code}: {bytes(data[:200]).decode('utf-8', 'replace')}", retry, None
        try:
            reply = json.loads(bytes(data))
            content = reply["choices"][0]["message"]["content"]
            reported = reply.get("model")
        except (ValueError, KeyError, IndexError, TypeError):
            return None, "reply is not a chat completion", True, None
        verdict = parse_verdict(content or "")
        if verdict is None:
            return None, f"unreadable verdict: {str(content)[:120]!r}", True, reported
        return verdict, "", False, reported

    def judge_all(self, rows: list[dict], on_done: Callable[[int], None] | None = None) -> list[Judgement]:
        """Judge rows (`question`, `answer`, `pred`) concurrently; results in the rows' order."""
        done = [0]
        lock = threading.Lock()

        def one(row: dict) -> Judgement:
            j = self.judge(row["question"], row["answer"], row["pred"])
            with lock:
                done[0] += 1
                if on_done:
                    on_done(done[0])
            return j

        with ThreadPoolExecutor(max_workers=max(1, self.cfg.workers)) as pool:
            return list(pool.map(one, rows))
