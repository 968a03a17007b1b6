"""Writers of tiny datasets in the exact published file formats, for tests (no download needed).

- ``write_refcoco(root)``: the refer layout (ROOT/refcoco/instances.json, ROOT/refcoco/refs(unc).p,
  ROOT/train2014/*.jpg) with polygon, uncompressed-RLE and compressed-RLE masks;
- ``write_png(root)``: the PNG layout (ROOT/png_coco_val2017.json, ROOT/coco/annotations/panoptic_val2017.json,
  ROOT/coco/panoptic_val2017/*.png, ROOT/coco/val2017/*.jpg).

Masks are drawn first as boolean arrays and the annotations are derived from them (rectangles and an L
as integer-corner polygons, which pycocotools rasterises to exactly those pixels; RLE runs counted here
column-major), so a test can compare decoded masks pixel for pixel with what was drawn. ``bad=True``
adds one sample of each kind of problem a loader must count instead of crash on.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from flmm_probe.data.coco_masks import id_to_rgb


def rect(height: int, width: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """(height, width) bool, True on rows top..bottom-1 and columns left..right-1."""
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def rect_polygon(top: int, left: int, bottom: int, right: int) -> list[float]:
    """The COCO polygon (x, y pairs) whose rasterisation is ``rect(..., top, left, bottom, right)``."""
    return [left, top, right, top, right, bottom, left, bottom]


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: run lengths of the column-major pixels, starting with a run of zeros."""
    flat = mask.T.reshape(-1).astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE as it appears in JSON (counts as a str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


def _write_jpeg(path: Path, height: int, width: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def _sentence(sent_id: int, raw: str) -> dict[str, Any]:
    sent = raw.lower().strip(" .")
    return {"tokens": sent.split(), "raw": raw, "sent_id": sent_id, "sent": sent}


@dataclass
class RefcocoFiles:
    """What ``write_refcoco`` wrote: paths, the refs, and the drawn mask of every annotation id."""

    root: Path
    image_dir: Path
    refs: list[dict[str, Any]]
    masks: dict[int, np.ndarray]
    images: dict[int, Path] = field(default_factory=dict)

    def refs_in(self, split: str) -> list[dict[str, Any]]:
        return [r for r in self.refs if r["split"] == split]


def write_refcoco(root: str | Path, dataset: str = "refcoco", split_by: str = "unc", bad: bool = False) -> RefcocoFiles:
    """Write a tiny refer-format dataset under ``root`` and return what was written.

    Good refs: val 101 (ann 11, polygon, 2 sentences), val 102 (ann 12, uncompressed RLE, 1 sentence),
    testA 103 (ann 21, compressed RLE, 3 sentences), testB 104 (ann 22, two-part polygon), train 105
    (ann 13, L-shaped polygon), test 106 (ann 11, for refcocog-style "test" splits). ``bad=True`` adds val
    refs with a missing image (107), an unreadable image (108), an empty mask (109) and an unknown ann_id (110).
    """
    root = Path(root)
    image_dir = root / "train2014"
    sizes = {1: (40, 60), 2: (32, 48)}
    masks = {
        11: rect(40, 60, 5, 10, 20, 30),
        12: np.hypot(*np.mgrid[0:40, 0:60] - np.array([28, 40])[:, None, None]) < 7,
        13: rect(40, 60, 2, 2, 5, 10) | rect(40, 60, 5, 2, 12, 5),
        21: rect(32, 48, 1, 1, 9, 20) | rect(32, 48, 20, 30, 31, 47),
        22: rect(32, 48, 10, 5, 15, 12) | rect(32, 48, 18, 14, 30, 25),
    }
    segmentations: dict[int, Any] = {
        11: [rect_polygon(5, 10, 20, 30)],
        12: uncompressed_rle(masks[12]),
        13: [[2, 2, 10, 2, 10, 5, 5, 5, 5, 12, 2, 12]],
        21: compressed_rle(masks[21]),
        22: [rect_polygon(10, 5, 15, 12), rect_polygon(18, 14, 30, 25)],
    }
    ann_image = {11: 1, 12: 1, 13: 1, 21: 2, 22: 2}
    specs = [  # ref_id, ann_id, split, raw sentences
        (101, 11, "val", ["Man on the LEFT", "guy in red"]),
        (102, 12, "val", ["round thing"]),
        (103, 21, "testA", ["two boxes", "the pair", "both of them"]),
        (104, 22, "testB", ["two small blocks"]),
        (105, 13, "train", ["the l shape"]),
        (106, 11, "test", ["left man"]),
    ]
    if bad:
        sizes.update({3: (16, 16), 4: (16, 16)})
        masks.update({31: rect(16, 16, 2, 2, 8, 8), 41: rect(16, 16, 2, 2, 8, 8), 23: np.zeros((32, 48), bool)})
        segmentations.update({31: [rect_polygon(2, 2, 8, 8)], 41: [rect_polygon(2, 2, 8, 8)], 23: uncompressed_rle(masks[23])})
        ann_image.update({31: 3, 41: 4, 23: 2})
        specs += [(107, 31, "val", ["missing picture"]), (108, 41, "val", ["broken picture"]),
                  (109, 23, "val", ["nothing at all"]), (110, 999, "val", ["no annotation"])]

    images = {i: image_dir / f"COCO_train2014_{i:012d}.jpg" for i in sizes}
    for image_id, (h, w) in sizes.items():
        if image_id == 3:
            continue  # the missing image
        if image_id == 4:
            images[4].parent.mkdir(parents=True, exist_ok=True)
            images[4].write_bytes(b"this is not a jpeg")
            continue
        _write_jpeg(images[image_id], h, w, seed=image_id)

    categories = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 3, "name": "car", "supercategory": "vehicle"}]
    annotations = [
        {
            "id": ann_id,
            "image_id": ann_image[ann_id],
            "segmentation": seg,
            "area": float(masks[ann_id].sum()),
            "bbox": [0.0, 0.0, 1.0, 1.0],
            "iscrowd": int(isinstance(seg, dict)),
            "category_id": 1 if ann_id % 2 else 3,
        }
        for ann_id, seg in segmentations.items()
    ]
    coco = {
        "info": {"description": "tiny refer test set"},
        "images": [{"id": i, "file_name": p.name, "height": sizes[i][0], "width": sizes[i][1]} for i, p in images.items()],
        "annotations": annotations,
        "categories": categories,
    }
    refs, sent_id = [], 1000
    for ref_id, ann_id, split, raws in specs:
        image_id = ann_image.get(ann_id, 1)
        sentences = [_sentence(sent_id + k, raw) for k, raw in enumerate(raws)]
        sent_id += len(raws)
        refs.append({
            "sent_ids": [s["sent_id"] for s in sentences],
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",  # as in refer: image name + _<ann_id>
            "ann_id": ann_id,
            "ref_id": ref_id,
            "image_id": image_id,
            "split": split,
            "sentences": sentences,
            "category_id": 1 if ann_id % 2 else 3,
        })
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(coco))
    with (folder / f"refs({split_by}).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)  # refer's files date from Python 2
    return RefcocoFiles(root=root, image_dir=image_dir, refs=refs, masks=masks, images=images)


@dataclass
class PNGFiles:
    """What ``write_png`` wrote: paths, the narratives, and the drawn mask of every segment id."""

    root: Path
    narratives: list[dict[str, Any]]
    segment_masks: dict[int, np.ndarray]
    images: dict[int, Path]


# Segment ids as large as the real ones, so all three RGB channels carry bits.
PERSON_A, PERSON_B, FLOOR, WALL, UNPAINTED = 3226956, 6202563, 5069153, 1004, 4040
PNG_CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 190, "name": "floor-wood", "supercategory": "floor", "isthing": 0, "color": [218, 88, 184]},
    {"id": 199, "name": "wall-other-merged", "supercategory": "wall", "isthing": 0, "color": [102, 102, 156]},
]


def _segment(utterance: str, ids: tuple[int, ...] | list[int] = (), plural: bool = False) -> dict[str, Any]:
    return {"utterance": utterance, "segment_ids": [str(i) for i in ids], "plural": plural, "noun": bool(ids)}


def write_png(root: str | Path, split: str = "val", bad: bool = False) -> PNGFiles:
    """Write a tiny Panoptic Narrative Grounding dataset under ``root`` and return what was written.

    Image 139 (24x32) has two persons (things), a floor and a wall (stuff). Good narratives: one with
    singular, plural and stuff phrases and a repeated word ("person"), one with a single phrase.
    ``bad=True`` adds narratives with an unknown segment id, a segment that no pixel has (empty mask),
    a missing image (image 285) and no grounded phrase.
    """
    root = Path(root)
    h, w = 24, 32
    segment_masks = {
        PERSON_A: rect(h, w, 4, 2, 16, 8),
        PERSON_B: rect(h, w, 6, 20, 18, 26),
        FLOOR: rect(h, w, 18, 0, 24, 32) & ~rect(h, w, 6, 20, 18, 26),
    }
    segment_masks[WALL] = ~(segment_masks[PERSON_A] | segment_masks[PERSON_B] | segment_masks[FLOOR])
    segment_masks[UNPAINTED] = np.zeros((h, w), bool)
    ids = np.zeros((h, w), np.int64)
    for segment_id, mask in segment_masks.items():
        ids[mask] = segment_id
    category = {PERSON_A: 1, PERSON_B: 1, FLOOR: 190, WALL: 199, UNPAINTED: 1}

    narratives = [
        {"image_id": "139", "annotator_id": 7, "caption": "In this picture we can see a person and another person standing on the floor. Behind them there is a wall. The person is smiling.",
         "segments": [_segment("In this picture we can see"), _segment(" a person", [PERSON_A]), _segment("and"),
                      _segment("another person", [PERSON_B]), _segment("standing on"), _segment("the floor", [FLOOR]),
                      _segment(". Behind"), _segment("them", [PERSON_A, PERSON_B], plural=True), _segment("there is"),
                      _segment("a wall", [WALL]), _segment(". The"), _segment("person", [PERSON_A]), _segment("is smiling.")]},
        {"image_id": "139", "annotator_id": 8, "caption": "A wall.", "segments": [_segment("A wall", [WALL]), _segment(".")]},
    ]
    images = {139: root / "coco" / f"{split}2017" / "000000000139.jpg"}
    sizes = {139: (h, w)}
    if bad:
        images[285] = root / "coco" / f"{split}2017" / "000000000285.jpg"  # never written
        sizes[285] = (h, w)
        narratives += [
            {"image_id": "139", "caption": "A ghost.", "segments": [_segment("A ghost", [777])]},
            {"image_id": "139", "caption": "An invisible man.", "segments": [_segment("An invisible man", [UNPAINTED])]},
            {"image_id": "285", "caption": "A person.", "segments": [_segment("A person", [PERSON_A])]},
            {"image_id": "139", "caption": "Nothing to see.", "segments": [_segment("Nothing to see.")]},
        ]
    _write_jpeg(images[139], h, w, seed=139)
    png_dir = root / "coco" / f"panoptic_{split}2017"
    png_dir.mkdir(parents=True, exist_ok=True)
    for image_id in images:
        Image.fromarray(id_to_rgb(ids)).save(png_dir / f"{image_id:012d}.png")
    panoptic = {
        "info": {"description": "tiny panoptic test set"},
        "images": [{"id": i, "file_name": p.name, "height": sizes[i][0], "width": sizes[i][1]} for i, p in images.items()],
        "annotations": [
            {"image_id": i, "file_name": f"{i:012d}.png",
             "segments_info": [{"id": s, "category_id": category[s], "iscrowd": 0, "bbox": [0, 0, 1, 1], "area": int(m.sum())}
                               for s, m in segment_masks.items()]}
            for i in images
        ],
        "categories": PNG_CATEGORIES,
    }
    annotations = root / "coco" / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    (annotations / f"panoptic_{split}2017.json").write_text(json.dumps(panoptic))
    (root / f"png_coco_{split}2017.json").write_text(json.dumps(narratives))
    return PNGFiles(root=root, narratives=narratives, segment_masks=segment_masks, images=images)
