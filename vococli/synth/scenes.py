"""Synthetic scenes with exact answers: coloured shapes on plain backgrounds, and questions about them.

A scene is a list of frames; each frame is the list of objects drawn on it. Everything is drawn
from a numpy Generator, so a (seed, index) pair always gives the same scene and questions.
Kinds:
- frame: a static scene of 1-3 shapes (colour, shape, count, position, presence questions);
- temporal: shapes appear in order, move, change colour, or blink (order, direction, final
  colour, repetition questions);
- needle: a long stretch of grey distractors with one coloured shape shown for a few seconds;
- detail: 4-6 shapes in a 3 x 3 grid, asked what averaging cannot keep (synth/detail.py);
- long: the same grey stretch with several brief coloured events far apart (which came first,
  how many times, what colour at the start and at the end).
Needle and long scenes record, in `facts`, the frames each event was shown on and the
distractor's drawing parameters (so its frames can be drawn again without the scene).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (240, 220, 40),
    "purple": (150, 60, 190), "orange": (245, 140, 30), "white": (245, 245, 245), "cyan": (40, 210, 220),
}
BACKGROUNDS = [(70, 70, 70), (30, 40, 60), (35, 60, 40), (80, 60, 45), (15, 15, 15)]
DISTRACTOR = (150, 150, 150)  # grey: never one of COLORS
SHAPES = ("circle", "square", "triangle")
# a region per position word: centre (x, y) as fractions of the frame
REGIONS = {"left": (0.2, 0.5), "right": (0.8, 0.5), "top": (0.5, 0.2), "bottom": (0.5, 0.8)}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six"]
KINDS = ("frame", "temporal", "needle", "long", "detail")  # mix draws from the first three
QUESTION_TYPES = ("color", "shape", "count", "position", "exists", "order", "direction", "final_color",
                  "start_color", "repeat", "needle_shape", "needle_color", "long_order", "long_repeat",
                  "long_final_color", "long_start_color", "detail_left", "detail_smallest", "detail_count")


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str  # a COLORS name, or "grey" for distractors
    x: float  # centre, fraction of the width
    y: float  # centre, fraction of the height
    size: float  # half extent, fraction of the side

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS.get(self.color, DISTRACTOR)


@dataclass
class Scene:
    kind: str
    background: tuple[int, int, int]
    frames: list[list[Obj]]
    qa: list[tuple[str, str, str]] = field(default_factory=list)  # (type, question, answer)
    facts: dict = field(default_factory=dict)  # drawing parameters worth recording (e.g. needle time)


def _pick(rng: np.random.Generator, items, n: int):
    return [items[i] for i in rng.choice(len(items), size=n, replace=False)]


def _jitter(rng: np.random.Generator, centre: tuple[float, float]) -> tuple[float, float]:
    return centre[0] + rng.uniform(-0.05, 0.05), centre[1] + rng.uniform(-0.05, 0.05)


def frame_scene(rng: np.random.Generator, n_frames: int = 3) -> Scene:
    """A static scene; asks about colour, shape, count, position and presence."""
    n = int(rng.integers(1, 4))
    shapes, colors = _pick(rng, SHAPES, n), _pick(rng, list(COLORS), n)
    regions = _pick(rng, list(REGIONS), n)
    objs = [Obj(s, c, *_jitter(rng, REGIONS[r]), rng.uniform(0.1, 0.14)) for s, c, r in zip(shapes, colors, regions)]
    scene = Scene("frame", BACKGROUNDS[rng.integers(len(BACKGROUNDS))], [objs] * n_frames)
    o = int(rng.integers(n))
    absent = [s for s in SHAPES if s not in shapes]
    probe = absent[rng.integers(len(absent))] if absent and rng.random() < 0.5 else shapes[rng.integers(n)]
    scene.qa = [
        ("color", f"what colour is the {shapes[o]}?", colors[o]),
        ("shape", f"which shape is {colors[o]}?", shapes[o]),
        ("count", "how many shapes are there?", NUMBERS[n]),
        ("position", f"where is the {shapes[o]}?", regions[o]),
        ("exists", f"is there a {probe}?", "yes" if probe in shapes else "no"),
    ]
    return scene


def temporal_scene(rng: np.random.Generator, n_frames: int = 8) -> Scene:
    """Events over time; one scenario per scene."""
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    scenario = ("order", "direction", "final_color", "repeat")[rng.integers(4)]
    frames: list[list[Obj]] = [[] for _ in range(n_frames)]
    if scenario == "order":
        n = int(rng.integers(2, 4))
        shapes, colors, regions = _pick(rng, SHAPES, n), _pick(rng, list(COLORS), n), _pick(rng, list(REGIONS), n)
        starts = sorted(_pick(rng, list(range(n_frames - 1)), n))
        for s, c, r, t0 in zip(shapes, colors, regions, starts):
            o = Obj(s, c, *_jitter(rng, REGIONS[r]), 0.12)
            for t in range(t0, n_frames):
                frames[t].append(o)
        which = "first" if rng.random() < 0.5 else "last"
        qa = [("order", f"which shape appeared {which}?", shapes[0] if which == "first" else shapes[-1])]
    elif scenario == "direction":
        shape, color = _pick(rng, SHAPES, 1)[0], _pick(rng, list(COLORS), 1)[0]
        direction = _pick(rng, ["left", "right", "up", "down"], 1)[0]
        a, b = rng.uniform(0.2, 0.3), rng.uniform(0.7, 0.8)
        other = rng.uniform(0.35, 0.65)
        for t in range(n_frames):
            u = a + (b - a) * t / (n_frames - 1)
            pos = {"right": (u, other), "left": (1 - u, other), "down": (other, u), "up": (other, 1 - u)}[direction]
            frames[t].append(Obj(shape, color, *pos, 0.11))
        qa = [("direction", f"which direction did the {shape} move?", direction)]
    elif scenario == "final_color":
        shape = _pick(rng, SHAPES, 1)[0]
        c0, c1 = _pick(rng, list(COLORS), 2)
        t_change = int(rng.integers(1, n_frames - 1))
        pos = _jitter(rng, REGIONS[_pick(rng, list(REGIONS), 1)[0]])
        for t in range(n_frames):
            frames[t].append(Obj(shape, c0 if t < t_change else c1, *pos, 0.12))
        qa = [("final_color", f"what colour was the {shape} at the end?", c1),
              ("start_color", f"what colour was the {shape} at the start?", c0)]
    else:  # repeat: the shape blinks on k times, separated by empty frames
        shape, color = _pick(rng, SHAPES, 1)[0], _pick(rng, list(COLORS), 1)[0]
        k = int(rng.integers(1, 4))
        # k runs of 1-2 frames, separated by at least one empty frame
        starts = sorted(_pick(rng, list(range(0, n_frames - 1, 2)), k))
        pos = _jitter(rng, REGIONS[_pick(rng, list(REGIONS), 1)[0]])
        for t0 in starts:
            frames[t0].append(Obj(shape, color, *pos, 0.12))
        qa = [("repeat", f"how many times did the {color} {shape} appear?", NUMBERS[k])]
    return Scene("temporal", bg, frames, qa)


@dataclass(frozen=True)
class Distractor:
    """The grey shape of needle and long scenes, circling the centre slowly."""

    shape: str
    phase: float
    speed: float

    def angle(self, t: int) -> float:
        return self.phase + self.speed * t

    def at_angle(self, angle: float) -> Obj:
        return Obj(self.shape, "grey", float(0.5 + 0.15 * np.cos(angle)), float(0.5 + 0.15 * np.sin(angle)), 0.08)

    def obj(self, t: int) -> Obj:
        return self.at_angle(self.angle(t))


def _distractor(rng: np.random.Generator) -> Distractor:
    shape = _pick(rng, SHAPES, 1)[0]
    return Distractor(shape, float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.05, 0.2)))


def _grey_stretch(dis: Distractor, n_frames: int, events: list[tuple[int, Obj]], show: int) -> list[list[Obj]]:
    frames = [[dis.obj(t)] for t in range(n_frames)]
    for at, obj in events:
        for t in range(at, min(at + show, n_frames)):
            frames[t].append(obj)
    return frames


def _facts(dis: Distractor, events: list[tuple[int, Obj]], show: int) -> dict:
    return {"distractor": {"shape": dis.shape, "phase": dis.phase, "speed": dis.speed},
            "events": [[at, at + show] for at, _ in events]}


def needle_scene(rng: np.random.Generator, n_frames: int, show: int = 3, depth: float | None = None) -> Scene:
    """Grey distractor shapes drifting for n_frames; one coloured shape appears for `show` frames,
    at `depth` (0 = the start, 1 = the end) when given, else anywhere."""
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    at = int(rng.integers(0, max(1, n_frames - show)))
    if depth is not None:
        at = int(round(min(max(depth, 0.0), 1.0) * max(0, n_frames - show)))
    shape, color = _pick(rng, SHAPES, 1)[0], _pick(rng, list(COLORS), 1)[0]
    needle = Obj(shape, color, *_jitter(rng, REGIONS[_pick(rng, list(REGIONS), 1)[0]]), 0.13)
    dis = _distractor(rng)
    frames = _grey_stretch(dis, n_frames, [(at, needle)], show)
    qa = [("needle_shape", "which coloured shape appeared in the video?", shape),
          ("needle_color", "what colour was the shape that appeared briefly?", color)]
    facts = {"needle_frame": at, "needle_frames": show, **_facts(dis, [(at, needle)], show)}
    return Scene("needle", bg, frames, qa, facts=facts)


def _spread(rng: np.random.Generator, n_frames: int, n: int, show: int) -> list[int]:
    """n sorted start frames of `show`-frame events with at least `show` empty frames between them."""
    room = n_frames - n * show - (n - 1) * show
    if room < 1:
        raise ValueError(f"{n} events of {show} frames do not fit in {n_frames} frames")
    cuts = np.sort(rng.choice(room, size=n, replace=True))
    return [int(c) + i * 2 * show for i, c in enumerate(cuts)]


def long_scene(rng: np.random.Generator, n_frames: int, show: int = 3) -> Scene:
    """A grey stretch of n_frames (at least 18) with 2-3 brief coloured events far apart; one scenario:
    order (distinct shapes), repeat (one shape shown 1-3 times) or colour change (one shape shown
    2-3 times, its colour changing between showings)."""
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    scenario = ("order", "repeat", "final_color")[rng.integers(3)]
    place = lambda: _jitter(rng, REGIONS[_pick(rng, list(REGIONS), 1)[0]])  # noqa: E731
    if scenario == "order":
        n = int(rng.integers(2, 4))
        shapes, colors = _pick(rng, SHAPES, n), _pick(rng, list(COLORS), n)
        objs = [Obj(s, c, *place(), 0.13) for s, c in zip(shapes, colors)]
        which = "first" if rng.random() < 0.5 else "last"
        qa = [("long_order", f"which shape appeared {which}?", shapes[0] if which == "first" else shapes[-1])]
    elif scenario == "repeat":
        n = int(rng.integers(1, 4))
        shape, color = _pick(rng, SHAPES, 1)[0], _pick(rng, list(COLORS), 1)[0]
        objs = [Obj(shape, color, *place(), 0.13) for _ in range(n)]
        qa = [("long_repeat", f"how many times did the {color} {shape} appear?", NUMBERS[n])]
    else:
        n = int(rng.integers(2, 4))
        shape = _pick(rng, SHAPES, 1)[0]
        colors = _pick(rng, list(COLORS), n)
        objs = [Obj(shape, c, *place(), 0.13) for c in colors]
        qa = [("long_final_color", f"what colour was the {shape} at the end?", colors[-1]),
              ("long_start_color", f"what colour was the {shape} at the start?", colors[0])]
    dis = _distractor(rng)
    events = list(zip(_spread(rng, n_frames, n, show), objs))
    frames = _grey_stretch(dis, n_frames, events, show)
    return Scene("long", bg, frames, qa, facts=_facts(dis, events, show))


def draw(scene: Scene, t: int, size: int) -> np.ndarray:
    """Render frame t as (size, size, 3) uint8 RGB."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = scene.background
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    for o in scene.frames[t]:
        dx, dy = xx - o.x, yy - o.y
        if o.shape == "circle":
            inside = dx * dx + dy * dy <= o.size * o.size
        elif o.shape == "square":
            inside = (np.abs(dx) <= o.size * 0.9) & (np.abs(dy) <= o.size * 0.9)
        else:  # triangle pointing up: inside the three half-planes
            inside = (dy <= o.size) & (dy >= -o.size + 2 * np.abs(dx))
        img[inside] = o.rgb
    return img
