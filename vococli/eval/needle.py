"""`vococli experiment needle`: needle in a video haystack (V-NIAH) over length x depth.

For each length (seconds at 1 fps) it writes a needle set with `synth` (one coloured shape shown
for 3 s among grey distractors, at each requested depth: 0 = the start, 1 = the end), and
optionally a set of long temporal clips (several brief events far apart); compresses every clip
once; asks each question through the same path as `ask` (greedy, with its evidence); and appends
one line per question to `needle.jsonl`. A rerun skips what is done: written sets, finished
caches, answered questions. `report` turns the lines into `needle.json`, `needle.md` and the heat
map `needle.png` (eval/heatmap.py).

Work folder:
    data/needle-<L>/, data/long-<L>/   the synth sets
    caches/                            one cache per clip (eval/caches.py names)
    needle.jsonl                       the answers, with timings and evidence
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from vococli.errors import UserError
from vococli.synth.clips import SynthConfig, synthesize

ANSWERS = "needle.jsonl"


@dataclass(frozen=True)
class NeedleConfig:
    workdir: str
    lengths: tuple[int, ...] = (60, 600, 1800, 3600, 10800)  # seconds (frames at 1 fps)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    clips: int = 4  # needle clips per (length, depth) cell, two questions each
    long_clips: int = 0  # long temporal clips per length
    seed: int = 7000  # set of length L: seed + L (needles), seed + 1 + L (long clips)
    max_new_tokens: int = 8

    def check(self) -> None:
        if not self.lengths or min(self.lengths) < 18:
            raise UserError("--lengths: each length must be at least 18 seconds")
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            raise UserError("--depths: each depth must lie from 0 to 1")
        if self.clips < 1 or self.long_clips < 0:
            raise UserError("--clips must be at least 1 and --long-clips at least 0")


def data_sets(cfg: NeedleConfig) -> dict[str, SynthConfig]:
    sets = {}
    for length in cfg.lengths:
        sets[f"needle-{length}"] = SynthConfig(seed=cfg.seed + length, count=cfg.clips * len(cfg.depths),
                                               kind="needle", needle_seconds=(length,), needle_depths=cfg.depths)
        if cfg.long_clips:
            sets[f"long-{length}"] = SynthConfig(seed=cfg.seed + 1 + length, count=cfg.long_clips, kind="long",
                                                 needle_seconds=(length,))
    return sets


def _written(folder: Path, synth: SynthConfig) -> bool:
    done = folder / "synth_config.json"
    if not done.exists():
        return False
    if json.loads(done.read_text()) != json.loads(json.dumps(asdict(synth))):
        raise UserError(f"{folder}: holds another synth set than this experiment asks for; use a new --workdir")
    return True


def write_data(cfg: NeedleConfig, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Path]:
    folders = {}
    for name, synth in data_sets(cfg).items():
        folder = Path(cfg.workdir) / "data" / name
        if not _written(folder, synth):
            synthesize(synth, folder, progress=(lambda d, t, n=name: progress(f"writing {n}", d, t)) if progress
                       else None)
        folders[name] = folder
    return folders


def _done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text().splitlines():
        try:
            done.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut short by a kill: asked again
    return done


def _cache_bytes(cache: Path) -> int:
    return sum(f.stat().st_size for f in cache.iterdir() if f.is_file())


def run_needle(cfg: NeedleConfig, model_path: str | None = None,
               progress: Callable[[str, int, int], None] | None = None, notice: Callable[[str], None] = print) -> Path:
    """Write the sets, compress and ask what is not done yet; returns needle.jsonl."""
    from vococli.answer.opening import open_for_answering
    from vococli.answer.prompts import prompt_length
    from vococli.answer.settings import GenerationConfig
    from vococli.eval.caches import compressed_cache
    from vococli.eval.formats import SHORT_ANSWER_SUFFIX
    from vococli.eval.judge import exact_match
    from vococli.families.loading import load_model
    from vococli.video.sampling import Sampling

    cfg.check()
    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    folders = write_data(cfg, progress)
    answers = work / ANSWERS
    done = _done_ids(answers)
    todo = []
    for name, folder in folders.items():
        records = json.loads((folder / "scenes.json").read_text())  # in clip order: clip i has depth i mod len
        scenes = {s["video_id"]: s for s in records}
        qa = json.loads((folder / "test_qa.json").read_text())
        needle = name.startswith("needle-")
        depths = {s["video_id"]: cfg.depths[i % len(cfg.depths)] if needle else None for i, s in enumerate(records)}
        for e in qa:
            if e["id"] not in done:
                todo.append((name, folder, scenes[e["video_id"]], depths[e["video_id"]], e))
    if not todo:
        return answers
    model = load_model(model_path)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens)
    sampling = Sampling(fps=1.0)
    by_video: dict[str, list] = {}
    for item in todo:
        by_video.setdefault(item[2]["video_id"], []).append(item)
    asked = 0
    with answers.open("a") as log:
        for vid, items in by_video.items():
            name, folder, scene, depth, _ = items[0]
            video = folder / "videos" / f"{vid}.mp4"
            t0 = time.perf_counter()
            cache, computed = compressed_cache(model, video, work / "caches", sampling, notice=notice)
            compress_s = time.perf_counter() - t0 if computed else None
            t1 = time.perf_counter()
            reserve = max(prompt_length(model, e["question"] + SHORT_ANSWER_SUFFIX) for *_, e in items)
            session = open_for_answering(cache, model, reserve + gen.max_new_tokens, decode="dynamic", notice=notice)
            load_s = time.perf_counter() - t1
            for _, _, _, _, e in items:
                session.reset()
                ans = session.ask(e["question"] + SHORT_ANSWER_SUFFIX, gen, evidence=True)
                top = ans.evidence.top(1)[0] if ans.evidence is not None else None
                events = scene["facts"].get("events", [])
                hit = top is not None and any(a <= top["seconds"] < b for a, b in events)
                row = {"id": e["id"], "set": name, "kind": scene["kind"], "length_s": scene["frames"],
                       "depth": depth, "type": e["type"], "answer": e["answer"], "pred": ans.text,
                       "correct": exact_match(e["answer"], ans.text), "events": events,
                       "evidence_top": top, "evidence_hit": hit, "frames": session.video.n_frames,
                       "cache_bytes": _cache_bytes(cache), "compress_s": compress_s, "load_s": round(load_s, 4),
                       "ttft_s": round(ans.time_to_first_token_s, 4), "answer_s": round(ans.total_s, 4)}
                log.write(json.dumps(row) + "\n")
                log.flush()
                asked += 1
                if progress:
                    progress("asking", asked, len(todo))
    return answers
