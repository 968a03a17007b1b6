"""ReasonSeg (LISA, Lai et al. 2023): images with implicit questions and the mask of what answers them.

Layout: ``ROOT/SPLIT/<name>.jpg`` next to ``ROOT/SPLIT/<name>.json``, the JSON in labelme's form:

    {"text": ["what can make the woman stand higher?", ...], "is_sentence": true,
     "shapes": [{"label": "target", "points": [[x, y], ...], ...}, ...]}

The mask is LISA's: polygons are filled (outline included) largest first, so a smaller one drawn later wins
where they overlap; a polygon labelled "flag" is left out, one whose label contains "ignore" marks pixels
that evaluation leaves out (``IGNORE``), every other one the target (1). LISA rasterises with OpenCV at
integer-truncated vertices; here PIL fills the same integer polygons, which can differ from OpenCV by a
pixel along edges.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .samples import BadSample

log = logging.getLogger(__name__)

IGNORE = 255


@dataclass
class ReasonSegSample:
    """One image: its questions (each a query for the same mask), and the mask (H, W) uint8: 0 background,
    1 target, ``IGNORE`` left out of the scores."""

    sample_id: str
    image_path: Path
    questions: list[str]
    is_sentence: bool
    mask: np.ndarray


def polygon_mask(shapes: list[dict], size: tuple[int, int]) -> np.ndarray:
    """LISA's (H, W) uint8 mask of labelme ``shapes`` at ``size`` (height, width) (see the module docstring)."""
    height, width = size
    kept = [s for s in shapes if s["label"].lower() != "flag"]
    polygons = [[(int(x), int(y)) for x, y in s["points"]] for s in kept]

    def area(points: list[tuple[int, int]]) -> int:
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).polygon(points, fill=1, outline=1)
        return int(np.asarray(canvas).sum())

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for k in sorted(range(len(kept)), key=lambda k: area(polygons[k]), reverse=True):
        value = IGNORE if "ignore" in kept[k]["label"].lower() else 1
        draw.polygon(polygons[k], fill=value, outline=value)
    return np.asarray(canvas).copy()


class ReasonSeg:
    """The samples of ``ROOT/SPLIT``, in file-name order. Iterating yields the good ones; a JSON that cannot be
    read, lacks a key, has no image or no target pixel is logged and kept in ``bad``."""

    def __init__(self, root: str | Path, split: str) -> None:
        self.folder = Path(root) / split
        if not self.folder.is_dir():
            raise FileNotFoundError(f"No ReasonSeg split folder {self.folder}: expected ROOT/SPLIT/<name>.jpg + <name>.json.")
        self.files = sorted(self.folder.glob("*.json"))
        self.bad: list[BadSample] = []

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[ReasonSegSample]:
        self.bad = []
        for path in self.files:
            try:
                yield self._read(path)
            except (OSError, ValueError, KeyError, TypeError) as err:
                kind = type(err).__name__
                log.warning("reasonseg: skipping %s (%s: %s)", path.name, kind, err)
                self.bad.append(BadSample(path.stem, kind, str(err)))

    def _read(self, path: Path) -> ReasonSegSample:
        annotation = json.loads(path.read_text(encoding="utf-8", errors="replace"))
        image_path = next((p for p in (path.with_suffix(e) for e in (".jpg", ".png", ".jpeg")) if p.is_file()), None)
        if image_path is None:
            raise FileNotFoundError(f"{path}: no image next to it (<name>.jpg or .png)")
        with Image.open(image_path) as image:
            size = (image.height, image.width)
        questions = annotation["text"]
        questions = [questions] if isinstance(questions, str) else list(questions)
        mask = polygon_mask(annotation["shapes"], size)
        if not (mask == 1).any():
            raise ValueError(f"{path}: no target pixel")
        return ReasonSegSample(path.stem, image_path, questions, bool(annotation["is_sentence"]), mask)


def iou_ignoring(predicted: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    """(intersection, union) of a (H, W) bool prediction with a ReasonSeg mask, ``IGNORE`` pixels left out."""
    scored = mask != IGNORE
    target = mask == 1
    return int((predicted & target & scored).sum()), int(((predicted | target) & scored).sum())
