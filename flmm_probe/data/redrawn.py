"""Shapes-world scenes drawn by other code: does a score hold when only the drawing changes?

A grounding number measured on the scenes a model was trained on can rest on anything those scenes share:
the rasteriser, the placement rules, the backgrounds. ``redrawn_scene`` keeps what the words speak of (the
world's palette, shapes, size classes and caption template, objects named in a random order) and draws
everything else its own way: shapes are polygons rasterised by PIL with their own proportions (a square's
side 1.6 r, a cross's arms 0.6 r wide, a triangle's apex above its centre by 1.1 r), at their own rotation
jitter; objects are placed by a grid of jittered cells rather than by rejection; the background is a
two-colour gradient with blotches, with no floor band; object colours carry a per-object shade rather than
per-pixel noise. Masks are exactly the pixels drawn. The texts and questions are the world's
(``shapes.describe_scene``), so every organism score reads these scenes as it reads the world's
(``python -m flmm_probe.organism.scores PATH --splits redrawn``), and so does every analysis, through the data
spec ``shapes:redrawn:N[:TASK]`` (``flmm-probe counterfactual --data shapes:redrawn:100:caption``).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import binary_dilation

from .shapes import (COLOURS, HELD_OUT_PAIRS, IMAGE_SIZE, SHAPES, SIZE_RADIUS, SIZES, SPLITS, Obj, Scene, describe_scene,
                     make_scene)

SPLIT = "redrawn"
# Every split name a shapes scene can be made for: the world's, and the redrawn set.
SCENE_SPLITS = SPLITS + (SPLIT,)
# Unit outlines (x, y) around the centre, half-extent 1, before scaling by r and turning by a small angle.
_OUTLINES = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "diamond": [(0.0, -1.05), (1.05, 0.0), (0.0, 1.05), (-1.05, 0.0)],
    "triangle": [(0.0, -1.1), (0.95, 0.85), (-0.95, 0.85)],
    "cross": [(-0.3, -1.0), (0.3, -1.0), (0.3, -0.3), (1.0, -0.3), (1.0, 0.3), (0.3, 0.3), (0.3, 1.0), (-0.3, 1.0),
              (-0.3, 0.3), (-1.0, 0.3), (-1.0, -0.3), (-0.3, -0.3)],
}
MIN_OBJECTS, MAX_OBJECTS = 3, 5


def _draw(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """(IMAGE_SIZE, IMAGE_SIZE) bool: the pixels PIL fills for the shape."""
    canvas = Image.new("1", (IMAGE_SIZE, IMAGE_SIZE), 0)
    pen = ImageDraw.Draw(canvas)
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        c, s = math.cos(angle), math.sin(angle)
        pen.polygon([(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in _OUTLINES[shape]], fill=1)
    return np.asarray(canvas, bool)


def _background(rng: np.random.Generator) -> np.ndarray:
    """(IMAGE_SIZE, IMAGE_SIZE, 3) float: a diagonal gradient between two greys, with soft blotches."""
    t = np.linspace(0, 1, IMAGE_SIZE)
    ramp = (t[:, None] * rng.uniform(0, 1) + t[None, :] * rng.uniform(0, 1))[..., None] / 2
    a, b = rng.uniform(70, 175, size=(2, 1, 1, 1))
    img = a + (b - a) * ramp + np.zeros((1, 1, 3))
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    for _ in range(int(rng.integers(2, 6))):
        bx, by, br = rng.uniform(0, IMAGE_SIZE), rng.uniform(0, IMAGE_SIZE), rng.uniform(6, 20)
        img += rng.uniform(-15, 15) * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * br * br))[..., None]
    return img


def redrawn_scene(index: int, seed: int = 0) -> Scene:
    """Scene ``index`` of the redrawn set: 3-5 objects (fewer where one would touch another), none of
    ``HELD_OUT_PAIRS``, named in a random order."""
    rng = np.random.default_rng([seed, zlib.crc32(SPLIT.encode()), index])
    img = _background(rng)
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    cells = rng.permutation(9)[:n]  # a 3 x 3 grid of cells, one object per cell, jittered inside it
    pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]
    drawn: list[tuple[float, Obj]] = []
    taken = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    for cell in cells:
        colour, shape = pairs[int(rng.integers(len(pairs)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        r = rng.uniform(*SIZE_RADIUS[size])
        side = IMAGE_SIZE / 3
        cx = (cell % 3 + 0.5) * side + rng.uniform(-1, 1) * max(0.0, side / 2 - r - 1)
        cy = (cell // 3 + 0.5) * side + rng.uniform(-1, 1) * max(0.0, side / 2 - r - 1)
        mask = _draw(shape, cx, cy, r, rng.uniform(-0.15, 0.15))
        # Large shapes in neighbouring cells may touch: keep a background pixel between them, or drop the shape.
        if (binary_dilation(mask, np.ones((3, 3), bool)) & taken).any():
            continue
        taken |= mask
        img[mask] = np.clip(np.array(COLOURS[colour]) * rng.uniform(0.9, 1.05), 0, 255)
        drawn.append((cx, Obj(shape, colour, size, float(cx), float(cy), float(r), mask)))
    img += rng.normal(0, 4, size=img.shape)
    objects = [o for _, o in sorted(drawn, key=lambda t: t[0])]  # indexed left to right, as the world's
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    order = tuple(int(i) for i in rng.permutation(len(objects)))
    return describe_scene(SPLIT, index, seed, image, objects, None, IMAGE_SIZE, order, rng)


def shapes_scene(split: str, index: int, seed: int = 0) -> Scene:
    """Scene ``index`` of a ``SCENE_SPLITS`` split: the world's (``make_scene``), or the redrawn set's."""
    return redrawn_scene(index, seed) if split == SPLIT else make_scene(split, index, seed)
