"""`bench --sections evidence`: what `--evidence` costs, against the same answers without it.

With the default model (as startup and serve; its context holds 3 hours at 1 fps), for caches of
each length in `cfg.minutes` (random keys/values, 1 frame per second), one session on the
dynamic path answers the same question greedily with and without recording;
both give the same tokens (the recorded attention computes the model's own output), so the
ratio of the two times is the overhead.
"""

from __future__ import annotations

import statistics

from vococli.answer.paths import open_session
from vococli.answer.settings import GenerationConfig
from vococli.bench.answer import QUESTION, random_cache
from vococli.bench.timing import BenchConfig
from vococli.errors import UserError
from vococli.families.base import VocoModel


def evidence_overhead(cfg: BenchConfig, lm: VocoModel | None = None) -> list[dict]:
    if lm is None:
        from vococli.families.loading import load_model

        lm = load_model(None, vision=False)
    gen = GenerationConfig(max_new_tokens=cfg.answer_tokens)
    rows = []
    for minutes in cfg.minutes:
        frames = max(1, int(round(minutes * 60)))
        session = open_session(lm, random_cache(lm, frames), "dynamic", room=512 + gen.max_new_tokens)
        ids = session.prompt_ids(QUESTION)
        try:
            session.check_room(ids, gen.max_new_tokens)
        except UserError as e:
            rows.append({"minutes": minutes, "frames": frames, "error": str(e)})
            continue

        def once(evidence: bool):
            session.reset()
            return session.answer(ids, gen, evidence=evidence)

        once(False), once(True)  # warm-up
        plain = [once(False) for _ in range(cfg.repeats)]
        recorded = [once(True) for _ in range(cfg.repeats)]
        assert recorded[0].token_ids == plain[0].token_ids  # recording never changes the answer
        med = lambda xs, f: statistics.median(f(a) for a in xs)  # noqa: E731
        base_ttft, ev_ttft = med(plain, lambda a: a.time_to_first_token_s), med(recorded, lambda a: a.time_to_first_token_s)
        base_total, ev_total = med(plain, lambda a: a.total_s), med(recorded, lambda a: a.total_s)
        rows.append({"minutes": minutes, "frames": frames, "answer_tokens": len(plain[0].token_ids),
                     "ttft_ms": round(base_ttft * 1000, 2), "ttft_evidence_ms": round(ev_ttft * 1000, 2),
                     "answer_ms": round(base_total * 1000, 1), "answer_evidence_ms": round(ev_total * 1000, 1),
                     "overhead": round(ev_total / base_total, 3)})
    return rows
