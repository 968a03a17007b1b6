"""Panoptic Narrative Grounding (PNG): COCO narratives whose noun phrases are grounded in panoptic segments.

Files::

    png_coco_{split}2017.json        list of narratives: image_id (str), caption (the narrative), segments
                                     [{utterance, segment_ids (list of str), plural, noun}] that cut the
                                     caption into consecutive utterances; grounded ones list segment ids
    panoptic_{split}2017.json        COCO panoptic: images (id, file_name, height, width), annotations
                                     (image_id, file_name of the PNG, segments_info [{id, category_id, ...}]),
                                     categories (id, name, isthing)
    panoptic_{split}2017/*.png       segment id per pixel, RGB-encoded: id = R + 256 G + 256**2 B
    {split}2017/*.jpg                the COCO images

One sample per narrative: ``text`` is the caption, one phrase per grounded utterance (non-empty
``segment_ids``), located in the caption as its stripped utterance; its mask is the union of its
segments. ``is_thing`` is True when any of its segments is of a thing category: a singular phrase has
one segment, so this is that segment's category; the reference code marks every plural phrase a thing,
which this agrees with whenever the group holds a thing (plural phrases name groups of things).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flmm_probe.data.coco_masks import panoptic_ids
from flmm_probe.data.samples import GroundingDataset, GroundingSample, SampleError, SamplePhrase

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


@dataclass(frozen=True)
class _Narrative:
    sample_id: str
    image_id: int
    caption: str
    phrases: tuple[SamplePhrase, ...]
    attributes: dict[str, Any]


class PNGDataset(GroundingDataset):
    """The PNG narratives of one split as ``GroundingSample``s (masks: (phrase, H, W) bool).

    Sample ids look like ``png/val/139/0``: the image id and the narrative's rank among that image's
    narratives in the file. ``from_root`` reads the reference code's layout; pass paths for any other.
    """

    def __init__(
        self,
        narratives: str | Path,
        panoptic_json: str | Path,
        panoptic_dir: str | Path,
        image_dir: str | Path,
        split: str = "val",
    ) -> None:
        super().__init__()
        self.split = split
        self.name = f"png/{split}"
        self.panoptic_dir, self.image_dir = Path(panoptic_dir), Path(image_dir)
        with Path(panoptic_json).open() as f:
            panoptic = json.load(f)
        self.images: dict[int, dict[str, Any]] = {img["id"]: img for img in panoptic["images"]}
        self.panoptic: dict[int, dict[str, Any]] = {a["image_id"]: a for a in panoptic["annotations"]}
        self.isthing: dict[int, bool] = {c["id"]: bool(c["isthing"]) for c in panoptic["categories"]}
        with Path(narratives).open() as f:
            records = json.load(f)
        seen: dict[int, int] = {}
        for record in records:
            image_id = int(record["image_id"])
            rank = seen[image_id] = seen.get(image_id, -1) + 1
            narrative = self._narrative(f"{self.name}/{image_id}/{rank}", image_id, record)
            if narrative is not None:
                self._entries.append(narrative)
        log.info("%s: %d narratives usable of %d", self.name, len(self._entries), len(records))

    @classmethod
    def from_root(cls, root: str | Path, split: str = "val") -> PNGDataset:
        """The reference code's layout: ROOT/png_coco_{split}2017.json, ROOT/coco/annotations/panoptic_{split}2017.json,
        ROOT/coco/panoptic_{split}2017/ (PNGs) and ROOT/coco/{split}2017/ (images)."""
        if split not in SPLITS:
            raise ValueError(f"PNG has no split {split!r}; choose one of {SPLITS}")
        root = Path(root)
        return cls(
            narratives=root / f"png_coco_{split}2017.json",
            panoptic_json=root / "coco" / "annotations" / f"panoptic_{split}2017.json",
            panoptic_dir=root / "coco" / f"panoptic_{split}2017",
            image_dir=root / "coco" / f"{split}2017",
            split=split,
        )

    def _narrative(self, sample_id: str, image_id: int, record: dict[str, Any]) -> _Narrative | None:
        """The narrative's phrases with spans and flags, or None (recorded as bad) if it cannot be used."""
        if image_id not in self.images or image_id not in self.panoptic:
            self._skip(sample_id, "unknown image", f"image {image_id} is not in the panoptic json")
            return None
        categories = {s["id"]: s["category_id"] for s in self.panoptic[image_id]["segments_info"]}
        caption: str = record["caption"]
        phrases, cursor = [], 0
        for segment in record["segments"]:
            utterance = segment["utterance"].strip()
            start = caption.find(utterance, cursor) if utterance else -1
            ids = [int(i) for i in segment["segment_ids"]]
            if not ids:
                # Ungrounded utterances only move the cursor, so a repeated word is found in reading order.
                cursor = start + len(utterance) if start >= 0 else cursor
                continue
            if start < 0:
                self._skip(sample_id, "utterance not in caption", f"{segment['utterance']!r} is not in {caption!r} after char {cursor}")
                return None
            unknown = [i for i in ids if i not in categories]
            if unknown:
                self._skip(sample_id, "unknown segment id", f"segments {unknown} of {utterance!r} are not in image {image_id}'s segments_info")
                return None
            cursor = start + len(utterance)
            phrases.append(
                SamplePhrase(
                    text=utterance,
                    start=start,
                    end=cursor,
                    plural=bool(segment["plural"]),
                    is_thing=any(self.isthing[categories[i]] for i in ids),
                    attributes={"segment_ids": ids, "category_ids": [categories[i] for i in ids], "noun": segment.get("noun")},
                )
            )
        if not phrases:
            self._skip(sample_id, "no grounded phrase", "no utterance of this narrative has segment ids")
            return None
        attributes = {"dataset": "png", "split": self.split, "image_id": image_id}
        if "annotator_id" in record:
            attributes["annotator_id"] = record["annotator_id"]
        return _Narrative(sample_id, image_id, caption, tuple(phrases), attributes)

    def _build(self, entry: _Narrative) -> GroundingSample:
        image = self.images[entry.image_id]
        size = (int(image["height"]), int(image["width"]))
        png_path = self.panoptic_dir / self.panoptic[entry.image_id]["file_name"]
        return GroundingSample(
            sample_id=entry.sample_id,
            image_path=self.image_dir / image["file_name"],
            image_size=size,
            text=entry.caption,
            phrases=list(entry.phrases),
            attributes=dict(entry.attributes),
            load_masks=lambda: self._masks(png_path, entry, size),
        )

    def _masks(self, png_path: Path, entry: _Narrative, size: tuple[int, int]) -> np.ndarray:
        """(phrase, H, W) bool: each phrase's mask is the union of its segments' pixels."""
        if not png_path.is_file():
            raise SampleError("missing panoptic png", f"{png_path} does not exist; check panoptic_dir")
        try:
            ids = panoptic_ids(png_path)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise SampleError("unreadable panoptic png", f"{png_path}: {err}") from err
        if ids.shape != size:
            raise SampleError("panoptic size", f"{png_path} is {ids.shape}, the image is {size}")
        return np.stack([np.isin(ids, p.attributes["segment_ids"]) for p in entry.phrases])
