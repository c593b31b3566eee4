"""The synthetic QA generator: deterministic by seed, and its answers match what is drawn."""

import json

import numpy as np
import pytest

from vococli.errors import UserError
from vococli.synth.clips import SynthConfig, annotations, make_scene, synthesize
from vococli.synth.scenes import COLORS, NUMBERS, REGIONS, SHAPES, draw
from vococli.video.reader import VideoReader
from vococli.video.sampling import Sampling, plan_frames


def test_same_seed_same_annotation_bytes(tmp_path):
    cfg = SynthConfig(seed=3, count=6, needle_seconds=(8,))
    synthesize(cfg, tmp_path / "a")
    synthesize(cfg, tmp_path / "b")
    for name in ("train.json", "test_qa.json", "scenes.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = SynthConfig(seed=4, count=6)
    assert annotations(other)[2] != annotations(cfg)[2]


def colour_name(rgb):
    return min(COLORS, key=lambda c: sum((int(a) - int(b)) ** 2 for a, b in zip(COLORS[c], rgb)))


def test_frame_answers_match_the_drawing():
    cfg = SynthConfig(seed=5, count=40, kind="frame")
    for i in range(cfg.count):
        scene = make_scene(cfg, i)
        objs = scene.frames[0]
        img = draw(scene, 0, 96)
        qa = {t: (q, a) for t, q, a in scene.qa}
        # colour answer: the pixel at the named shape's centre has that colour
        q, a = qa["color"]
        shape = q.split("the ")[1].rstrip("?")
        o = next(o for o in objs if o.shape == shape)
        assert colour_name(img[int(o.y * 96), int(o.x * 96)]) == a
        assert qa["count"][1] == NUMBERS[len(objs)]
        region = qa["position"][1]
        cx, cy = REGIONS[region]
        assert abs(o.x - cx) < 0.1 and abs(o.y - cy) < 0.1
        probe = qa["exists"][0].split("a ")[-1].rstrip("?")
        assert qa["exists"][1] == ("yes" if any(x.shape == probe for x in objs) else "no")


def test_temporal_and_needle_answers_match_the_frames():
    cfg = SynthConfig(seed=6, count=40, kind="temporal")
    for i in range(cfg.count):
        scene = make_scene(cfg, i)
        t, q, a = scene.qa[0]
        if t == "order":
            firsts = {}
            for k, f in enumerate(scene.frames):
                for o in f:
                    firsts.setdefault(o.shape, k)
            order = sorted(firsts, key=firsts.get)
            assert a == (order[0] if "first" in q else order[-1])
        elif t == "direction":
            a0, a1 = scene.frames[0][0], scene.frames[-1][0]
            dx, dy = a1.x - a0.x, a1.y - a0.y
            expect = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
            assert a == expect
        elif t == "final_color":
            assert a == scene.frames[-1][0].color and scene.qa[1][2] == scene.frames[0][0].color
        else:
            shown = [bool(f) for f in scene.frames]
            runs = sum(1 for k, s in enumerate(shown) if s and (k == 0 or not shown[k - 1]))
            assert a == NUMBERS[runs]
    needle = make_scene(SynthConfig(seed=7, count=1, kind="needle", needle_seconds=(60,)), 0)
    at = needle.facts["needle_frame"]
    coloured = [k for k, f in enumerate(needle.frames) if any(o.color in COLORS for o in f)]
    assert coloured == list(range(at, at + 3)) and len(needle.frames) == 60
    assert needle.qa[0][2] in SHAPES and needle.qa[1][2] in COLORS


def test_written_clip_shows_the_scene(tmp_path):
    cfg = SynthConfig(seed=8, count=3, kind="temporal")
    synthesize(cfg, tmp_path)
    qa = json.loads((tmp_path / "test_qa.json").read_text())
    train = json.loads((tmp_path / "train.json").read_text())
    assert len(qa) == len(train) and train[0]["conversations"][0]["value"].startswith("<video>\n")
    scene = make_scene(cfg, 0)
    r = VideoReader(tmp_path / "videos" / f"{qa[0]['video_id']}.mp4")
    assert len(r.timestamps) == len(scene.frames)
    frames = np.concatenate([b.frames for b in r.read(plan_frames(r.timestamps, Sampling(fps=1)), 16)])
    for k in range(len(scene.frames)):
        diff = np.abs(frames[k].astype(int) - draw(scene, k, cfg.size).astype(int)).mean()
        assert diff < 4  # only video-compression error


def test_bad_options():
    with pytest.raises(UserError, match="--count must be at least 1"):
        synthesize(SynthConfig(count=0), "/tmp/never")
    with pytest.raises(UserError, match="--kind 'nope': choose one of frame, temporal, needle, long, detail, mix"):
        make_scene(SynthConfig(kind="nope"), 0)


def test_types_filter_keeps_ids_and_half_the_prompts_carry_the_short_answer_suffix(tmp_path):
    from vococli.eval.formats import SHORT_ANSWER_SUFFIX

    full = annotations(SynthConfig(seed=8, count=10, kind="mix", needle_seconds=(8,)))
    shape = annotations(SynthConfig(seed=8, count=10, kind="mix", needle_seconds=(8,), types=("shape",)))
    want = [e for e in full[2] if e["type"] == "shape"]
    assert shape[2] == want and want  # same ids, questions and answers as in the unfiltered set
    assert {i for i, _ in shape[0]} == {int(e["id"].split("_")[2]) for e in want}
    prompts = [s["conversations"][0]["value"] for s in full[1]]
    with_suffix = [p for p in prompts if p.endswith(SHORT_ANSWER_SUFFIX)]
    assert 0.3 < len(with_suffix) / len(prompts) < 0.7
    assert all(p.removesuffix(SHORT_ANSWER_SUFFIX) == "<video>\n" + e["question"] for p, e in zip(prompts, full[2]))
    with pytest.raises(UserError, match="unknown question type 'colour'"):
        annotations(SynthConfig(count=2, types=("colour",)))
    with pytest.raises(UserError, match="no temporal clip asks a question of type shape"):
        synthesize(SynthConfig(count=3, kind="temporal", types=("shape",)), tmp_path / "none")


def test_an_interrupted_clip_leaves_no_file(tmp_path, monkeypatch):
    """A clip is written under a temporary name and renamed once complete: an interruption in the
    middle of a clip leaves neither a partial file nor a clip that looks whole."""
    import vococli.synth.clips as synth

    real = synth.draw
    calls = []

    def interrupted(scene, t, size):
        calls.append(t)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(scene, t, size)

    monkeypatch.setattr(synth, "draw", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize(SynthConfig(seed=8, count=1, kind="temporal"), tmp_path)
    assert list((tmp_path / "videos").iterdir()) == []
    monkeypatch.setattr(synth, "draw", real)
    synthesize(SynthConfig(seed=8, count=1, kind="temporal"), tmp_path)
    assert [p.suffix for p in (tmp_path / "videos").iterdir()] == [".mp4"]


def _showings(scene):
    """(start frame, object) of each run of frames showing a coloured object, read from the frames."""
    runs, prev = [], None
    for k, f in enumerate(scene.frames):
        cur = next((o for o in f if o.color in COLORS), None)
        if cur is not None and cur != prev:
            runs.append((k, cur))
        prev = cur
    return runs


def test_long_answers_match_the_frames():
    cfg = SynthConfig(seed=8, count=30, kind="long", needle_seconds=(40, 300))
    seen = set()
    for i in range(cfg.count):
        scene = make_scene(cfg, i)
        runs = _showings(scene)
        assert [a for a, _ in runs] == [a for a, _ in scene.facts["events"]]
        assert all(b - a == 3 for a, b in scene.facts["events"])
        gaps = [b[0] - a[0] for a, b in zip(runs, runs[1:])]
        assert all(g >= 6 for g in gaps)  # separate showings, never one long one
        for qtype, q, a in scene.qa:
            seen.add(qtype)
            if qtype == "long_order":
                assert a == (runs[0][1].shape if "first" in q else runs[-1][1].shape)
            elif qtype == "long_repeat":
                assert a == NUMBERS[len(runs)] and f"{runs[0][1].color} {runs[0][1].shape}" in q
            elif qtype == "long_final_color":
                assert a == runs[-1][1].color and runs[-1][1].shape in q
            else:
                assert qtype == "long_start_color" and a == runs[0][1].color
    assert seen == {"long_order", "long_repeat", "long_final_color", "long_start_color"}


def test_needle_depths_place_the_needle():
    cfg = SynthConfig(seed=3, count=3, kind="needle", needle_seconds=(100,), needle_depths=(0.0, 0.5, 1.0))
    starts = [make_scene(cfg, i).facts["needle_frame"] for i in range(3)]
    assert starts == [0, 48, 97]
    assert [_showings(make_scene(cfg, i))[0][0] for i in range(3)] == starts
    # a depth moves the needle and nothing else
    free = make_scene(SynthConfig(seed=3, count=3, kind="needle", needle_seconds=(100,)), 1)
    placed = make_scene(cfg, 1)
    assert free.qa == placed.qa and free.background == placed.background


def test_detail_answers_match_the_drawing():
    """Answers recomputed from the drawn objects alone (positions, sizes, colours)."""
    cfg = SynthConfig(seed=12, count=60, kind="detail")
    counts = set()
    for i in range(cfg.count):
        scene = make_scene(cfg, i)
        objs = scene.frames[0]
        assert 4 <= len(objs) <= 6
        cell = lambda o: (int(o.y * 3), int(o.x * 3))  # noqa: E731
        assert len({cell(o) for o in objs}) == len(objs)  # one shape per cell
        (_, q_left, a_left), (_, _, a_small), (_, q_count, a_count) = scene.qa
        named = [o for o in objs if q_left.endswith(f"the {o.color} {o.shape}?")]
        assert len(named) == 1
        r, c = cell(named[0])
        left = [o for o in objs if cell(o) == (r, c - 1)]
        assert len(left) == 1 and a_left == left[0].color
        sizes = sorted(o.size for o in objs)
        assert sizes[0] < sizes[1] - 0.03 and a_small == min(objs, key=lambda o: o.size).color
        colour = q_count.split("how many ")[1].split(" shapes")[0]
        assert a_count == NUMBERS[sum(o.color == colour for o in objs)]
        counts.add(a_count)
    assert len(counts) >= 3  # the count answer is not one constant
    img = draw(make_scene(cfg, 0), 0, 96)
    assert img.shape == (96, 96, 3)
