"""The shapes world: procedural scenes with exact masks for every phrase.

A scene is an 80x80 RGB image with 1-5 coloured shapes on a noisy wall, usually above a textured
floor band (the "stuff"). Everything is a pure function of ``(split, index, seed)``, so a scene can be
re-made anywhere without storing it. Each scene carries:

- ``objects``: shape, colour, size class and the exact visible boolean mask (H, W) of each object;
- ``caption``: the objects left to right, e.g. "a large red circle, a small blue cross and a small
  green square." with one noun phrase per object (``caption_phrases``);
- ``expressions``: RefCOCO-style referring expressions that single out one object, some relational
  ("the red circle left of the blue square") and some superlative ("the largest triangle");
- ``narrative``: a PNG-style narrative whose noun phrases (singular, plural, things and stuff) are
  char spans into it, each with its mask;
- ``inventory``: the answer to ``LIST_OBJECTS``, each object left to right named by its shape first,
  e.g. "the circle is red and large, the cross is blue and small." (the organism's one training text
  whose colour and size words follow the shape word they belong to);
- ``qa``: questions with one-word answers ("what colour is the triangle?" -> "red").

Splits ``train``/``val``/``test`` never contain the colour-shape pairs in ``HELD_OUT_PAIRS``; every
scene of the ``compositional`` split contains at least one of them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

IMAGE_SIZE = 80
SHAPES = ("circle", "square", "triangle", "cross", "diamond")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses", "diamond": "diamonds"}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 175, 50),
    "blue": (35, 75, 225),
    "yellow": (240, 220, 30),
    "purple": (145, 50, 190),
    "orange": (250, 135, 20),
    "cyan": (30, 215, 225),
    "white": (250, 250, 250),
}
SIZES = ("small", "large")
MAX_OBJECTS = 5
# Half-extent in pixels of each size class (the shape spans about twice this).
SIZE_RADIUS = {"small": (7.0, 8.5), "large": (11.5, 13.5)}
FLOORS = ("striped", "checkered", "grassy")
NUMBERS = ("zero", "one", "two", "three", "four", "five")
# Colour-shape pairs that no train/val/test scene contains (one per shape and per colour).
HELD_OUT_PAIRS = frozenset({("red", "triangle"), ("blue", "cross"), ("green", "diamond"), ("yellow", "circle"), ("purple", "square")})
SPLITS = ("train", "val", "test", "compositional")
DESCRIBE = "Please give me a description of the image."
LIST_OBJECTS = "Please list the objects."
# Answered by the caption's phrases in a random order (the organism's training only; F-LMM records after DESCRIBE).
NAME_OBJECTS = "what objects can we see?"

_OBJECT_NOISE = 10  # max absolute per-channel noise on object pixels
_MIN_DX = 4.0  # objects' centres differ by at least this in x, so "left to right" is well defined


@dataclass
class Obj:
    """One object. ``mask``: (H, W) bool, exactly the pixels painted with its colour."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float
    mask: np.ndarray

    @property
    def words(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class Phrase:
    """A noun phrase: ``text == owner_text[start:end]``; ``mask``: (H, W) bool."""

    text: str
    start: int
    end: int
    mask: np.ndarray
    plural: bool
    is_thing: bool
    object_ids: tuple[int, ...] = ()


@dataclass
class Expression:
    """A referring expression for object ``target``; ``mask``: (H, W) bool, the target's mask."""

    text: str
    target: int
    mask: np.ndarray
    kind: str  # "attribute" | "relational" | "superlative"


def expression_group(text: str, kind: str) -> str:
    """An expression's kind, attribute expressions split by how many attributes they say (the fewest that
    single out their referent): "attribute/1" ("the cross") .. "attribute/3" ("the large red cross")."""
    return f"attribute/{len(text.split()) - 1}" if kind == "attribute" else kind


@dataclass
class QA:
    question: str
    answer: str
    kind: str  # "colour" | "shape" | "size" | "count" | "exists"; organism.text's referring questions: their expression's kind


@dataclass
class Scene:
    """One scene. ``image``: (H, W, 3) uint8 RGB. Objects are listed left to right."""

    split: str
    index: int
    seed: int
    image: np.ndarray
    objects: list[Obj]
    floor: str | None
    stuff_masks: dict[str, np.ndarray]
    caption: str
    caption_phrases: list[Phrase]
    expressions: list[Expression]
    narrative: str
    narrative_phrases: list[Phrase]
    inventory: str
    qa: list[QA] = field(default_factory=list)


def _rng(split: str, index: int, seed: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Exact (size, size) bool mask of a shape centred at (cx, cy) with half-extent r, pixel centres."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = 0.85 * r
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "cross":
        t = 0.36 * r
        return ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))
    if shape == "triangle":  # upward pointing, base at cy + r
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.55)
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def _background(rng: np.random.Generator, floor: str | None) -> tuple[np.ndarray, int]:
    """A noisy low-saturation wall and an optional floor band; returns (image float32, floor top row)."""
    h = w = IMAGE_SIZE
    base = rng.uniform(90, 165)
    tint = rng.uniform(-12, 12, size=3)
    img = base + tint + rng.normal(0, 9, size=(h, w, 3))
    top = h
    if floor is not None:
        top = int(rng.integers(56, 66))
        y, x = np.mgrid[top:h, 0:w]
        if floor == "striped":
            period = int(rng.integers(4, 7))
            band = np.where(((x + y) // period) % 2 == 0, 1.0, 0.0)[..., None]
            col = band * np.array([150, 110, 70]) + (1 - band) * np.array([95, 70, 45])
        elif floor == "checkered":
            cell = int(rng.integers(4, 7))
            band = np.where(((x // cell) + (y // cell)) % 2 == 0, 1.0, 0.0)[..., None]
            col = band * np.array([185, 185, 175]) + (1 - band) * np.array([60, 60, 65])
        else:  # grassy: dark olive with vertical blade noise
            blades = rng.normal(0, 1, size=(1, w, 1)) * 18
            col = np.array([85, 110, 55]) + blades + rng.normal(0, 14, size=(h - top, w, 1))
        img[top:] = col + rng.normal(0, 6, size=(h - top, w, 3))
    return img, top


def _sample_objects(rng: np.random.Generator, split: str) -> list[tuple[str, str, str]]:
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    allowed = [p for p in pairs if p not in HELD_OUT_PAIRS]
    out: list[tuple[str, str, str]] = []
    for i in range(n):
        if out and rng.random() < 0.25:  # repeat a colour-shape pair so plurals occur
            colour, shape, _ = out[int(rng.integers(len(out)))]
        elif split == "compositional" and i == 0:
            colour, shape = sorted(HELD_OUT_PAIRS)[int(rng.integers(len(HELD_OUT_PAIRS)))]
        else:
            pool = pairs if split == "compositional" else allowed
            colour, shape = pool[int(rng.integers(len(pool)))]
        out.append((colour, shape, SIZES[int(rng.integers(2))]))
    return out


def _place(rng: np.random.Generator, specs: list[tuple[str, str, str]]) -> list[tuple[float, float, float]]:
    """Non-overlapping (cx, cy, r) for each spec; drops specs that do not fit after many tries."""
    placed: list[tuple[float, float, float]] = []
    for _, _, size in specs:
        lo, hi = SIZE_RADIUS[size]
        for _ in range(200):
            r = float(rng.uniform(lo, hi))
            cx = float(rng.uniform(r + 1, IMAGE_SIZE - r - 1))
            cy = float(rng.uniform(r + 1, IMAGE_SIZE - r - 1))
            ok = all(max(abs(cx - x), abs(cy - y)) > r + q + 2 and abs(cx - x) >= _MIN_DX for x, y, q in placed)
            if ok:
                placed.append((cx, cy, r))
                break
        else:
            placed.append((np.nan, np.nan, np.nan))
    return placed


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _article_phrase(o: Obj) -> str:
    return f"{_a(o.size)} {o.words}"


def _spans(text_parts: list[str], sep_parts: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Concatenate sep_parts[0] + text_parts[0] + sep_parts[1] + ...; returns text and part spans."""
    text, spans = "", []
    for sep, part in zip(sep_parts, text_parts):
        text += sep
        spans.append((len(text), len(text) + len(part)))
        text += part
    return text, spans


def _caption(objects: list[Obj]) -> tuple[str, list[Phrase]]:
    parts = [_article_phrase(o) for o in objects]
    seps = [""] + [", "] * max(0, len(parts) - 2) + ([" and "] if len(parts) > 1 else [])
    text, spans = _spans(parts, seps)
    phrases = [Phrase(p, s, e, o.mask, False, True, (i,)) for i, (p, (s, e), o) in enumerate(zip(parts, spans, objects))]
    return text + ".", phrases


def _inventory(objects: list[Obj]) -> str:
    return ", ".join(f"the {o.shape} is {o.colour} and {o.size}" for o in objects) + "."


def _narrative(rng: np.random.Generator, objects: list[Obj], floor: str | None, stuff: dict[str, np.ndarray]) -> tuple[str, list[Phrase]]:
    groups: dict[tuple[str, str], list[int]] = {}
    for i, o in enumerate(objects):
        groups.setdefault((o.colour, o.shape), []).append(i)
    parts, ids = [], []
    for (colour, shape), members in groups.items():
        if len(members) == 1:
            parts.append(_article_phrase(objects[members[0]]))
        else:
            parts.append(f"{NUMBERS[len(members)]} {colour} {PLURALS[shape]}")
        ids.append(tuple(members))
    verb = "is" if len(ids[0]) == 1 else "are"
    opening = ("in this picture there " + verb + " ", "this image shows ", "here we can see ")[int(rng.integers(3))]
    seps = [opening] + [", "] * max(0, len(parts) - 2) + ([" and "] if len(parts) > 1 else [])
    stuff_parts = []
    if floor is not None:
        stuff_parts.append((f"a {floor} floor", "floor"))
        seps.append(" on ")
    stuff_parts.append(("a gray wall", "wall"))
    seps.append(" in front of ")
    text, spans = _spans(parts + [p for p, _ in stuff_parts], seps)
    phrases = []
    for p, (s, e), members in zip(parts, spans, ids):
        mask = np.logical_or.reduce([objects[i].mask for i in members])
        phrases.append(Phrase(p, s, e, mask, len(members) > 1, True, members))
    for (p, key), (s, e) in zip(stuff_parts, spans[len(parts):]):
        phrases.append(Phrase(p, s, e, stuff[key], False, False, ()))
    return text + ".", phrases


def _relation(a: Obj, b: Obj) -> str | None:
    """Spatial relation of a to b, or None when it is not clear-cut."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= 8 and abs(dx) >= 1.5 * abs(dy):
        return "left of" if dx < 0 else "right of"
    if abs(dy) >= 8 and abs(dy) >= 1.5 * abs(dx):
        return "above" if dy < 0 else "below"
    return None


def _unique_name(objects: list[Obj], i: int) -> str | None:
    """Shortest of "shape", "colour shape", "size colour shape" that matches object i alone."""
    o = objects[i]
    for keys in (("shape",), ("colour", "shape"), ("size", "colour", "shape")):
        match = [j for j, p in enumerate(objects) if all(getattr(p, k) == getattr(o, k) for k in keys)]
        if match == [i]:
            return " ".join(getattr(o, k) for k in keys)
    return None


def _expressions(objects: list[Obj]) -> list[Expression]:
    out: list[Expression] = []
    for i, o in enumerate(objects):
        name = _unique_name(objects, i)
        if name is not None:
            out.append(Expression(f"the {name}", i, o.mask, "attribute"))
        same = [j for j, p in enumerate(objects) if (p.colour, p.shape) == (o.colour, o.shape)]
        if len(same) > 1:  # relational: single out one of several alike objects by an anchor
            for a, anchor in enumerate(objects):
                anchor_name = _unique_name(objects, a)
                rel = _relation(o, anchor)
                if a in same or anchor_name is None or rel is None:
                    continue
                if all(_relation(objects[j], anchor) != rel for j in same if j != i):
                    out.append(Expression(f"the {o.colour} {o.shape} {rel} the {anchor_name}", i, o.mask, "relational"))
                    break
        kind = [j for j, p in enumerate(objects) if p.shape == o.shape]
        if len(kind) > 1:
            areas = sorted((objects[j].area, j) for j in kind)
            if areas[-1][1] == i and areas[-1][0] > 1.3 * areas[-2][0]:
                out.append(Expression(f"the largest {o.shape}", i, o.mask, "superlative"))
            if areas[0][1] == i and areas[1][0] > 1.3 * areas[0][0]:
                out.append(Expression(f"the smallest {o.shape}", i, o.mask, "superlative"))
            xs = sorted((objects[j].cx, j) for j in kind)
            if xs[0][1] == i:
                out.append(Expression(f"the leftmost {o.shape}", i, o.mask, "superlative"))
            if xs[-1][1] == i:
                out.append(Expression(f"the rightmost {o.shape}", i, o.mask, "superlative"))
    return out


def count_question(objects: list[Obj], shape: str) -> QA:
    """'how many crosses are there?' answered by the number of ``objects`` of that ``shape``, in words."""
    return QA(f"how many {PLURALS[shape]} are there?", NUMBERS[sum(o.shape == shape for o in objects)], "count")


def _questions(rng: np.random.Generator, objects: list[Obj]) -> list[QA]:
    out: list[QA] = []
    for i, o in enumerate(objects):
        if [p.shape for p in objects].count(o.shape) == 1:
            out.append(QA(f"what colour is the {o.shape}?", o.colour, "colour"))
        if [p.colour for p in objects].count(o.colour) == 1:
            out.append(QA(f"what shape is the {o.colour} object?", o.shape, "shape"))
        if [(p.colour, p.shape) for p in objects].count((o.colour, o.shape)) == 1:
            out.append(QA(f"what size is the {o.colour} {o.shape}?", o.size, "size"))
    out.append(count_question(objects, SHAPES[int(rng.integers(len(SHAPES)))]))
    if rng.random() < 0.5:
        o = objects[int(rng.integers(len(objects)))]
        colour, shape = o.colour, o.shape
    else:
        colour, shape = list(COLOURS)[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))]
    present = any((p.colour, p.shape) == (colour, shape) for p in objects)
    out.append(QA(f"is there {_a(colour)} {colour} {shape}?", "yes" if present else "no", "exists"))
    return out


def make_scene(split: str, index: int, seed: int = 0) -> Scene:
    """The scene ``index`` of ``split``; the same arguments always give the same scene."""
    rng = _rng(split, index, seed)
    floor = FLOORS[int(rng.integers(len(FLOORS)))] if rng.random() < 0.85 else None
    img, top = _background(rng, floor)
    specs = _sample_objects(rng, split)
    places = _place(rng, specs)
    kept = sorted(((p, s) for p, s in zip(places, specs) if not np.isnan(p[0])), key=lambda t: t[0][0])
    objects: list[Obj] = []
    for (cx, cy, r), (colour, shape, size) in kept:
        mask = shape_mask(shape, cx, cy, r)
        noise = rng.integers(-_OBJECT_NOISE, _OBJECT_NOISE + 1, size=(int(mask.sum()), 3))
        img[mask] = np.array(COLOURS[colour]) + noise
        objects.append(Obj(shape, colour, size, cx, cy, r, mask))
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    things = np.logical_or.reduce([o.mask for o in objects])
    rows = np.arange(IMAGE_SIZE)[:, None] >= top
    floor_mask = np.broadcast_to(rows, things.shape) & ~things
    stuff = {"floor": floor_mask, "wall": ~floor_mask & ~things} if floor else {"wall": ~things}
    caption, caption_phrases = _caption(objects)
    narrative, narrative_phrases = _narrative(rng, objects, floor, stuff)
    return Scene(
        split=split,
        index=index,
        seed=seed,
        image=image,
        objects=objects,
        floor=floor,
        stuff_masks=stuff,
        caption=caption,
        caption_phrases=caption_phrases,
        expressions=_expressions(objects),
        narrative=narrative,
        narrative_phrases=narrative_phrases,
        inventory=_inventory(objects),
        qa=_questions(rng, objects),
    )


def vocabulary() -> list[str]:
    """Every word and punctuation mark that the world's texts and instructions use, sorted."""
    words = set(SHAPES) | set(PLURALS.values()) | set(COLOURS) | set(SIZES) | set(FLOORS) | set(NUMBERS)
    words |= set("a an the and , . ? in this picture there is are image shows here we can see on of front gray wall floor".split())
    words |= set("left right above below largest smallest leftmost rightmost".split())
    words |= set("what colour shape size how many object yes no".split())
    words |= set(" ".join((DESCRIBE, LIST_OBJECTS, NAME_OBJECTS)).replace(".", " . ").replace("?", " ? ").split())
    return sorted(words)


class ShapesDataset:
    """An iterable over ``make_scene(split, i, seed)`` for ``i in range(start, start + length)``."""

    def __init__(self, split: str, length: int, seed: int = 0, start: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        self.split, self.length, self.seed, self.start = split, length, seed, start

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Scene:
        if not 0 <= i < self.length:
            raise IndexError(i)
        return make_scene(self.split, self.start + i, self.seed)

    def __iter__(self) -> Iterator[Scene]:
        return (self[i] for i in range(self.length))
