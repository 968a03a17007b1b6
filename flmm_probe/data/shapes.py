"""The shapes world: procedural scenes with exact masks for every phrase.

A scene is an 80x80 RGB image with 1-5 coloured shapes on a noisy wall, usually above a textured
floor band (the "stuff"). Everything is a pure function of ``(split, index, seed)``, so a scene can be
re-made anywhere without storing it. Each scene carries:

- ``objects``: shape, colour, size class and the exact visible boolean mask (H, W) of each object;
- ``caption``: the objects in the scene's ``order``, e.g. "a small blue cross, a large red circle and a
  small green square." with one noun phrase per object (``caption_phrases``);
- ``expressions``: RefCOCO-style referring expressions that single out one object, some relational
  ("the red circle left of the blue square") and some superlative ("the largest triangle");
- ``narrative``: a PNG-style narrative whose noun phrases (singular, plural, things and stuff) are
  char spans into it, each with its mask;
- ``inventory``: the answer to ``LIST_OBJECTS``, each object in ``order`` named by its shape first,
  e.g. "the cross is blue and small, the circle is red and large." (colour and size words after the
  shape word they belong to);
- ``qa``: questions with one-word answers ("what colour is the triangle?" -> "red").

``objects`` are indexed left to right, but no text follows that order: ``order`` is a random permutation
(drawn apart from the image, which it never changes) in which the caption, the narrative's groups and the
inventory name the objects. A text whose k-th phrase is always the k-th object from the left lets a model
find an object by the phrase's place in the list instead of its words, and a grounding score then
measures list position (``analyses.counterfactual`` tells the two apart).

Splits ``train``/``val``/``test``/``edge``/``close`` never contain the colour-shape pairs in ``HELD_OUT_PAIRS``;
every scene of the ``compositional`` split contains at least one of them. Layouts (``LAYOUTS``): objects keep
clear of the frame and of each other ("spread", the val, test and compositional splits), are cut by the frame
("edge") or stand 1-2 px apart ("close"); the ``edge`` and ``close`` splits hold only those, and each train
scene draws its layout from ``TRAIN_LAYOUTS``.

The ``decoy`` split places a target among decoys of one other shape, some with the target's colour (other size),
some with its size (other colours): where a phrase's map follows its colour word or its size word alone, it
lands on a decoy as often as on the target (``make_scene(..., decoys=True)`` draws train scenes the same way).

The ``zoom`` split draws 3-5 objects of the same pixel sizes on a canvas ``ZOOM`` times wider (320x320): in the
model's 80x80 view they are ``ZOOM`` times smaller, too small to tell their shapes apart, while a crop around
one object, resized to 80x80, shows it at the size the world is drawn at. It is the split on which a visual
chain of thought (ground the object, crop, ask again) has something to gain (``grounded_tasks.evaluate_cot``).
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
SPLITS = ("train", "val", "test", "compositional", "edge", "close", "zoom", "decoy")
# The canvas of the zoom split is ZOOM times wider than IMAGE_SIZE; objects keep their pixel sizes.
ZOOM = 4
LAYOUTS = ("spread", "edge", "close")
# Train scenes' layouts: mostly spread, so that a spread train scene is the one the same index always gave.
TRAIN_LAYOUTS = {"spread": 0.8, "edge": 0.1, "close": 0.1}
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
    """One scene. ``image``: (H, W, 3) uint8 RGB. ``objects`` are indexed left to right; ``order`` is the
    order in which the caption, narrative and inventory name them."""

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
    order: tuple[int, ...] = ()


def canvas_size(split: str) -> int:
    """The side in pixels of ``split``'s images: ``IMAGE_SIZE``, or ``ZOOM * IMAGE_SIZE`` for the zoom split."""
    return ZOOM * IMAGE_SIZE if split == "zoom" else IMAGE_SIZE


def _rng(split: str, index: int, seed: int, stream: int = 0) -> np.random.Generator:
    """The scene's random stream ``stream``: 0 draws the image and its questions, 1 the order of its texts."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    key = [seed, zlib.crc32(split.encode()), index]
    return np.random.default_rng(key if stream == 0 else key + [stream])


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


def _background(rng: np.random.Generator, floor: str | None, canvas: int = IMAGE_SIZE) -> tuple[np.ndarray, int]:
    """A noisy low-saturation (canvas, canvas) wall and an optional floor band; returns (image float32, floor top row)."""
    h = w = canvas
    base = rng.uniform(90, 165)
    tint = rng.uniform(-12, 12, size=3)
    img = base + tint + rng.normal(0, 9, size=(h, w, 3))
    top = h
    if floor is not None:
        top = int(rng.integers(56, 66)) * canvas // IMAGE_SIZE
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
    n = int(rng.integers(3 if split == "zoom" else 1, MAX_OBJECTS + 1))  # the zoom split: a target among distractors
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


def _decoy_objects(rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """A target and 2-4 decoys of one other shape, some with the target's colour (other size), the others with its
    size (other colours): after a phrase's size and colour words, the shapes of the objects of that colour and of
    the objects of that size name the decoys' shape at least as often as the target's, so only an object found by
    both words together says which shape comes next."""
    allowed = [p for p in ((c, s) for c in COLOURS for s in SHAPES) if p not in HELD_OUT_PAIRS]
    colour, shape = allowed[int(rng.integers(len(allowed)))]
    size = SIZES[int(rng.integers(2))]
    other_size = SIZES[1 - SIZES.index(size)]
    decoy = str(rng.choice([s for s in SHAPES if s != shape and (colour, s) in allowed]))
    others = [c for c in COLOURS if c != colour and (c, decoy) in allowed]
    n_colour, n_size = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    out = [(colour, shape, size)] + [(colour, decoy, other_size)] * n_colour
    out += [(str(c), decoy, size) for c in rng.choice(others, n_size, replace=False)]
    return [out[i] for i in rng.permutation(len(out))]


def layout(split: str, index: int, seed: int) -> str:
    """How scene ``index`` of ``split`` places its objects (``LAYOUTS``)."""
    if split == "train":
        return str(_rng(split, index, seed, stream=2).choice(list(TRAIN_LAYOUTS), p=list(TRAIN_LAYOUTS.values())))
    return split if split in LAYOUTS else "spread"


def _centre(rng: np.random.Generator, r: float, placed: list[tuple[float, float, float]], style: str,
            canvas: int = IMAGE_SIZE) -> tuple[float, float]:
    """A candidate centre for an object of half-extent r. "edge": the first object against a side of the frame
    (its mask reaches the border row or column: every shape spans at least 0.85 r from its centre), the others
    up to half out of it; "close": next to a placed object, with 1-2 background pixels between their extents."""
    inside = (r + 1, canvas - r - 1)
    if style == "edge":
        if not placed:
            along, against = rng.uniform(*inside), rng.uniform(0.5 * r, 0.85 * r)
            side = int(rng.integers(4))
            against = against if side % 2 == 0 else canvas - against
            return (against, along) if side < 2 else (along, against)
        return rng.uniform(0.5 * r, canvas - 0.5 * r), rng.uniform(0.5 * r, canvas - 0.5 * r)
    if style == "close" and placed:
        x, y, q = placed[int(rng.integers(len(placed)))]
        gap, shift, side = q + r + rng.uniform(2.05, 3.0), rng.uniform(-0.5, 0.5) * q, int(rng.integers(4))
        sign = 1 if side % 2 == 0 else -1
        return (x + sign * gap, y + shift) if side < 2 else (x + shift, y + sign * gap)
    return rng.uniform(*inside), rng.uniform(*inside)


def _place(rng: np.random.Generator, specs: list[tuple[str, str, str]], style: str = "spread",
           canvas: int = IMAGE_SIZE) -> list[tuple[float, float, float]]:
    """Non-overlapping (cx, cy, r) for each spec on a (canvas, canvas) image, placed as the layout ``style`` says; drops
    specs that do not fit after many tries. Objects never overlap and keep at least one background pixel between them."""
    placed: list[tuple[float, float, float]] = []
    near = np.zeros((canvas, canvas), bool)  # "close": the placed masks grown by one pixel (8-neighbourhood)
    for _, shape, size in specs:
        lo, hi = SIZE_RADIUS[size]
        for _ in range(200):
            r = float(rng.uniform(lo, hi))
            cx, cy = (float(v) for v in _centre(rng, r, [p for p in placed if not np.isnan(p[0])], style, canvas))
            margin = 0.5 * r if style == "edge" else r + 1
            ok = margin <= min(cx, cy) and max(cx, cy) <= canvas - margin
            ok = ok and all(max(abs(cx - x), abs(cy - y)) > r + q + 2 and abs(cx - x) >= _MIN_DX for x, y, q in placed)
            if ok and style == "close":  # a triangle's base is wider than r: check the pixels themselves
                mask = shape_mask(shape, cx, cy, r, canvas)
                ok = not (mask & near).any()
                if ok:
                    grown = np.pad(mask, 1)
                    near |= np.logical_or.reduce([grown[1 + dy : 1 + dy + canvas, 1 + dx : 1 + dx + canvas]
                                                  for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
            if ok:
                placed.append((cx, cy, r))
                break
        else:
            placed.append((np.nan, np.nan, np.nan))
    return placed


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def article_phrase(o: Obj) -> str:
    """The caption's phrase for ``o``: "a large red circle"."""
    return f"{_a(o.size)} {o.words}"


def _spans(text_parts: list[str], sep_parts: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Concatenate sep_parts[0] + text_parts[0] + sep_parts[1] + ...; returns text and part spans."""
    text, spans = "", []
    for sep, part in zip(sep_parts, text_parts):
        text += sep
        spans.append((len(text), len(text) + len(part)))
        text += part
    return text, spans


def caption(objects: list[Obj], order: tuple[int, ...]) -> tuple[str, list[Phrase]]:
    """"a large red circle, a small blue cross and a small green square." naming ``objects[i]`` for ``i`` in
    ``order``; its phrases in text order, each with its object's index in ``object_ids``."""
    parts = [article_phrase(objects[i]) for i in order]
    seps = [""] + [", "] * max(0, len(parts) - 2) + ([" and "] if len(parts) > 1 else [])
    text, spans = _spans(parts, seps)
    phrases = [Phrase(p, s, e, objects[i].mask, False, True, (i,)) for i, p, (s, e) in zip(order, parts, spans)]
    return text + ".", phrases


def _inventory(objects: list[Obj], order: tuple[int, ...]) -> str:
    return ", ".join(f"the {objects[i].shape} is {objects[i].colour} and {objects[i].size}" for i in order) + "."


def _narrative(rng: np.random.Generator, objects: list[Obj], floor: str | None, stuff: dict[str, np.ndarray],
               order: tuple[int, ...]) -> tuple[str, list[Phrase]]:
    groups: dict[tuple[str, str], list[int]] = {}  # in order of each group's first object in ``order``
    for i in order:
        o = objects[i]
        groups.setdefault((o.colour, o.shape), []).append(i)
    parts, ids = [], []
    for (colour, shape), members in groups.items():
        if len(members) == 1:
            parts.append(article_phrase(objects[members[0]]))
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
        members = tuple(sorted(members))
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


@dataclass
class Reasoning:
    """A question answered by naming one object, whose answer must be inferred: "which object is the largest?"
    -> "the large red cross". ``target``: the object's index; ``kind``: "superlative" | "negation"."""

    question: str
    answer: str
    target: int
    kind: str


def reasoning_questions(objects: list[Obj]) -> list[Reasoning]:
    """The scene's questions whose answer is an object that no word of the question names.

    Superlatives over all objects ("which object is the largest / smallest / leftmost / rightmost?", the largest
    and smallest only with a 1.3x margin in area) and negations ("which object is not red?", "which object is not
    a circle?", where exactly one object lacks the colour or shape all the others share). Asked only where the
    answer, "the <size> <colour> <shape>", fits its object alone, so that its mask is the answer's.
    """
    if len(objects) < 2:
        return []
    out: list[Reasoning] = []
    areas = sorted((o.area, i) for i, o in enumerate(objects))
    if areas[-1][0] > 1.3 * areas[-2][0]:
        out.append(("which object is the largest?", areas[-1][1], "superlative"))
    if areas[1][0] > 1.3 * areas[0][0]:
        out.append(("which object is the smallest?", areas[0][1], "superlative"))
    out += [("which object is the leftmost?", 0, "superlative"), ("which object is the rightmost?", len(objects) - 1, "superlative")]
    for key in ("colour", "shape"):
        values = [getattr(o, key) for o in objects]
        for i, value in enumerate(values):
            others = set(values[:i] + values[i + 1:])
            if len(others) == 1 and value not in others:
                (other,) = others
                out.append((f"which object is not {other if key == 'colour' else _a(other) + ' ' + other}?", i, "negation"))
    named = [(q, i, kind) for q, i, kind in out if [o.words for o in objects].count(objects[i].words) == 1]
    return [Reasoning(q, f"the {objects[i].words}", i, kind) for q, i, kind in named]


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


def make_scene(split: str, index: int, seed: int = 0, decoys: bool = False) -> Scene:
    """The scene ``index`` of ``split``; the same arguments always give the same scene. ``decoys``: its objects
    are a target and decoys (``_decoy_objects``) instead of the split's own draw, as every scene of the ``decoy``
    split's are."""
    rng = _rng(split, index, seed)
    canvas = canvas_size(split)
    floor = FLOORS[int(rng.integers(len(FLOORS)))] if rng.random() < 0.85 else None
    img, top = _background(rng, floor, canvas)
    specs = _decoy_objects(rng) if decoys or split == "decoy" else _sample_objects(rng, split)
    places = _place(rng, specs, layout(split, index, seed), canvas)
    kept = sorted(((p, s) for p, s in zip(places, specs) if not np.isnan(p[0])), key=lambda t: t[0][0])
    objects: list[Obj] = []
    for (cx, cy, r), (colour, shape, size) in kept:
        mask = shape_mask(shape, cx, cy, r, canvas)
        noise = rng.integers(-_OBJECT_NOISE, _OBJECT_NOISE + 1, size=(int(mask.sum()), 3))
        img[mask] = np.array(COLOURS[colour]) + noise
        objects.append(Obj(shape, colour, size, cx, cy, r, mask))
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    order = tuple(int(i) for i in _rng(split, index, seed, stream=1).permutation(len(objects)))
    return describe_scene(split, index, seed, image, objects, floor, top, order, rng)


def describe_scene(split: str, index: int, seed: int, image: np.ndarray, objects: list[Obj], floor: str | None, floor_top: int,
                   order: tuple[int, ...], rng: np.random.Generator) -> Scene:
    """The ``Scene`` of a drawn image: its stuff masks, and the texts that name ``objects`` (indexed left to right) in
    ``order``; ``rng`` draws the narrative's wording and the questions. ``floor_top``: the floor band's first row
    (the image's height without a floor). Any drawing code can make scenes the world's texts and scores read."""
    things = np.logical_or.reduce([o.mask for o in objects])
    rows = np.arange(image.shape[0])[:, None] >= floor_top
    floor_mask = np.broadcast_to(rows, things.shape) & ~things
    stuff = {"floor": floor_mask, "wall": ~floor_mask & ~things} if floor else {"wall": ~things}
    caption_text, caption_phrases = caption(objects, order)
    narrative, narrative_phrases = _narrative(rng, objects, floor, stuff, order)
    return Scene(
        split=split,
        index=index,
        seed=seed,
        image=image,
        objects=objects,
        floor=floor,
        stuff_masks=stuff,
        caption=caption_text,
        caption_phrases=caption_phrases,
        expressions=_expressions(objects),
        narrative=narrative,
        narrative_phrases=narrative_phrases,
        inventory=_inventory(objects, order),
        qa=_questions(rng, objects),
        order=order,
    )


def vocabulary() -> list[str]:
    """Every word and punctuation mark that the world's texts and instructions use, sorted."""
    words = set(SHAPES) | set(PLURALS.values()) | set(COLOURS) | set(SIZES) | set(FLOORS) | set(NUMBERS)
    words |= set("a an the and , . ? in this picture there is are image shows here we can see on of front gray wall floor".split())
    words |= set("left right above below largest smallest leftmost rightmost".split())
    words |= set("what colour shape size how many object yes no which not".split())
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
