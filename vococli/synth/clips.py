"""`vococli synth`: write synthetic video QA sets (clips + LLaVA training JSON + QA JSON).

Output folder:
    videos/<id>.mp4      the clips, 1 frame per second (H.264)
    train.json           LLaVA conversation format, one question per sample, "video": "videos/<id>.mp4";
                         every other question ends with the short-answer instruction benchmark
                         evaluations append, so a model trained on it answers with or without it
    test_qa.json         [{"video_id", "question", "answer", "id", "type"}] (video_id = file stem)
    scenes.json          what was drawn (kind, frames, facts), for checking answers
Annotations depend only on the seed: the same seed writes the same JSON bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from vococli.errors import UserError, check_output_folder
from vococli.synth.detail import detail_scene
from vococli.eval.formats import SHORT_ANSWER_SUFFIX
from vococli.synth.scenes import (KINDS, QUESTION_TYPES, Scene, draw, frame_scene, long_scene, needle_scene,
                                  temporal_scene)

VIDEO_PROMPT = "<video>\n"


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    count: int = 100
    kind: str = "mix"  # frame | temporal | needle | long | detail | mix
    size: int = 96  # frame side in pixels
    needle_seconds: tuple[int, ...] = (60, 600, 3600)  # needle and long clip lengths, cycled
    needle_depths: tuple[float, ...] | None = None  # where the needle is (0-1), cycled; default: anywhere
    mix_needle_seconds: int = 60  # needle length inside a mix (keeps mixes quick to write)
    types: tuple[str, ...] | None = None  # keep only these question types (clips left without one are dropped)


def make_scene(cfg: SynthConfig, index: int) -> Scene:
    """Scene `index` of the set: depends only on (seed, index)."""
    rng = np.random.default_rng([cfg.seed, index])
    kind = cfg.kind
    if kind == "mix":
        kind = KINDS[int(rng.choice(3, p=[0.45, 0.45, 0.10]))]
    if kind == "frame":
        return frame_scene(rng)
    if kind == "temporal":
        return temporal_scene(rng)
    if kind == "detail":
        return detail_scene(rng)
    if kind in ("needle", "long"):
        length = cfg.mix_needle_seconds if cfg.kind == "mix" else cfg.needle_seconds[index % len(cfg.needle_seconds)]
        if kind == "long":
            return long_scene(rng, length)
        depths = cfg.needle_depths
        return needle_scene(rng, length, depth=depths[index % len(depths)] if depths else None)
    raise UserError(f"--kind {cfg.kind!r}: choose one of {', '.join(KINDS)}, mix")


def write_clip(scene: Scene, path: Path, size: int) -> None:
    """Encode the scene at 1 frame per second, under a temporary name renamed once complete (an
    interrupted run never leaves a clip that looks whole)."""
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")
    try:
        _encode(scene, partial, size)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _encode(scene: Scene, path: Path, size: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for t in range(len(scene.frames)):
            frame = av.VideoFrame.from_ndarray(draw(scene, t, size), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _dump(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def clip_id(cfg: SynthConfig, index: int) -> str:
    return f"synth_{cfg.seed}_{index:0{len(str(max(cfg.count - 1, 0)))}d}"


def annotations(cfg: SynthConfig) -> tuple[list[Scene], list[dict], list[dict]]:
    """Scenes (index, scene), LLaVA training samples and QA entries, without writing any video.

    A question keeps its id when `types` filters others out."""
    unknown = sorted(set(cfg.types or ()) - set(QUESTION_TYPES))
    if unknown:
        raise UserError(f"--types: unknown question type {unknown[0]!r}; choose from {', '.join(QUESTION_TYPES)}")
    scenes, train, qa = [], [], []
    for i in range(cfg.count):
        scene = make_scene(cfg, i)
        vid = clip_id(cfg, i)
        kept = [(j, t, q, a) for j, (t, q, a) in enumerate(scene.qa) if cfg.types is None or t in cfg.types]
        if not kept:
            continue
        scenes.append((i, scene))
        for j, qtype, q, a in kept:
            qid = f"{vid}_{j}"
            prompt = q + (SHORT_ANSWER_SUFFIX if (i + j) % 2 else "")
            train.append({"id": qid, "video": f"videos/{vid}.mp4", "conversations": [
                {"from": "human", "value": VIDEO_PROMPT + prompt}, {"from": "gpt", "value": a}]})
            qa.append({"video_id": vid, "question": q, "answer": a, "id": qid, "type": qtype})
    return scenes, train, qa


def scene_record(cfg: SynthConfig, index: int, scene: Scene) -> dict:
    """What was drawn; needle and long clips record their facts instead of every distractor frame."""
    objects = None if scene.kind in ("needle", "long") else [[asdict(o) for o in f] for f in scene.frames]
    return {"video_id": clip_id(cfg, index), "kind": scene.kind, "frames": len(scene.frames),
            "background": list(scene.background), "objects": objects, "facts": scene.facts}


SYNTH_FILES = ("videos", "train.json", "test_qa.json", "scenes.json", "synth_config.json")  # all it writes


def synthesize(cfg: SynthConfig, out: Path, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write clips and annotation files into `out`; returns counts."""
    if cfg.count < 1:
        raise UserError("--count must be at least 1")
    if cfg.size < 32 or cfg.size % 2:
        raise UserError("--size must be an even number of pixels, at least 32")
    out = Path(out)
    check_output_folder(out, "synth_config.json", "a synth folder", own=SYNTH_FILES)
    scenes, train, qa = annotations(cfg)
    if not scenes:
        raise UserError(f"no {cfg.kind} clip asks a question of type {', '.join(cfg.types or ())}")
    (out / "videos").mkdir(parents=True, exist_ok=True)
    for n, (i, scene) in enumerate(scenes, 1):
        write_clip(scene, out / "videos" / f"{clip_id(cfg, i)}.mp4", cfg.size)
        if progress:
            progress(n, len(scenes))
    _dump(train, out / "train.json")
    _dump(qa, out / "test_qa.json")
    _dump([scene_record(cfg, i, s) for i, s in scenes], out / "scenes.json")
    _dump(asdict(cfg), out / "synth_config.json")
    return {"clips": len(scenes), "questions": len(qa), "out": str(out)}


def vocabulary_text(count: int = 300) -> str:
    """Every question and answer of a fixed synthetic set: text a tokenizer can learn merges from."""
    lines = []
    for kind in ("frame", "temporal", "needle"):
        _, _, qa = annotations(SynthConfig(seed=0, count=count, kind=kind, needle_seconds=(8,)))
        lines += [f"{e['question']} ASSISTANT: {e['answer']}" for e in qa]
    return "\n".join(lines + [SHORT_ANSWER_SUFFIX.strip()] * 20)
