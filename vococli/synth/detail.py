"""Detail scenes: questions that averaging the image cannot answer.

Four to six shapes sit in the cells of a 3 x 3 grid (the cells of the 96-px frames' 32-px patches),
coloured from four colours with repeats. The questions need where a shape is relative to another,
which one is smallest, or how many of one colour there are among many, so global colour and count
statistics of the frame (what average pooling keeps) do not pass:
- detail_left: what colour is the shape left of the <colour> <shape>? (the named one is the only
  one of its colour and shape; its left neighbour is the next cell of its row);
- detail_smallest: what colour is the smallest shape? (one shape is clearly smaller than all others);
- detail_count: how many <colour> shapes are there? (zero to six).
"""

from __future__ import annotations

import numpy as np

from vococli.synth.scenes import BACKGROUNDS, COLORS, NUMBERS, SHAPES, Obj, Scene

CELL = (1 / 6, 1 / 2, 5 / 6)  # cell centres, fractions of the side
SMALLEST, LARGER = 0.05, (0.09, 0.14)  # half sizes: the smallest, and the range of the others


def detail_scene(rng: np.random.Generator, n_frames: int = 3) -> Scene:
    n = int(rng.integers(4, 7))
    palette = [list(COLORS)[i] for i in rng.choice(len(COLORS), size=4, replace=False)]
    # an adjacent left/right pair in one row first, then the other cells
    row, col = int(rng.integers(3)), int(rng.integers(2))
    cells = [(row, col), (row, col + 1)]
    rest = [(r, c) for r in range(3) for c in range(3) if (r, c) not in cells]
    cells += [rest[i] for i in rng.choice(len(rest), size=n - 2, replace=False)]
    colors = [palette[int(rng.integers(4))] for _ in range(n)]
    shapes = [SHAPES[int(rng.integers(3))] for _ in range(n)]
    # the right one of the pair is the only one of its colour and shape
    for i in [0, *range(2, n)]:
        while (colors[i], shapes[i]) == (colors[1], shapes[1]):
            colors[i] = palette[int(rng.integers(4))]
    small = int(rng.integers(n))
    sizes = [SMALLEST if i == small else float(rng.uniform(*LARGER)) for i in range(n)]
    objs = [Obj(s, c, CELL[cc] + rng.uniform(-0.02, 0.02), CELL[rr] + rng.uniform(-0.02, 0.02), z)
            for (rr, cc), c, s, z in zip(cells, colors, shapes, sizes)]
    probe = palette[int(rng.integers(4))]
    qa = [("detail_left", f"what colour is the shape left of the {colors[1]} {shapes[1]}?", colors[0]),
          ("detail_smallest", "what colour is the smallest shape?", colors[small]),
          ("detail_count", f"how many {probe} shapes are there?", NUMBERS[colors.count(probe)])]
    return Scene("detail", BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], [objs] * n_frames, qa,
                 facts={"cells": [list(c) for c in cells]})
