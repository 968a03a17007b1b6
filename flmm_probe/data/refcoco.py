"""RefCOCO, RefCOCO+ and RefCOCOg in the refer format, as grounding samples.

Files (the standard refer layout under a data root)::

    ROOT/refcoco/instances.json    COCO instances: images (id, file_name, height, width), annotations
                                   (id, image_id, segmentation, category_id, ...), categories
    ROOT/refcoco/refs(unc).p       pickled list of refs: ref_id, ann_id, image_id, split, category_id,
                                   file_name, sent_ids, sentences [{sent, tokens, raw, sent_id}]
    ROOT/refcoco+/...(unc).p, ROOT/refcocog/refs(umd).p   the same for the other two
    ROOT/train2014/                the COCO train2014 images all three use (``image_dir``)

A ref is one referred object (one COCO annotation) with one or more expressions ("sentences"). The
expression text is ``raw`` lower-cased, as the reference evaluation does. The image file is the COCO
image's ``file_name`` from instances.json (the ref's own ``file_name`` carries an ``_<ann_id>`` suffix and
names no file). Text modes:

- ``select_first``: one sample per ref, its first expression (the reference code's evaluation mode);
- ``all``: one sample per expression (the protocol most RES papers report);
- ``concat``: one sample per ref, all its expressions joined with ". ", each a phrase with the ref's mask;
- ``image``: one sample per image, the first expression of each ref joined with ". ", each phrase with
  its own object's mask (the shape of the reference code's training samples).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flmm_probe.data.coco_masks import MaskFormatError, segmentation_to_mask
from flmm_probe.data.safe_pickle import safe_load
from flmm_probe.data.samples import GroundingDataset, GroundingSample, SampleError, SamplePhrase

log = logging.getLogger(__name__)

# dataset -> (default split_by, {split_by: splits in its refs file})
REFER_SPLITS: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "refcoco": ("unc", {"unc": ("train", "val", "testA", "testB")}),
    "refcoco+": ("unc", {"unc": ("train", "val", "testA", "testB")}),
    "refcocog": ("umd", {"umd": ("train", "val", "test"), "google": ("train", "val")}),
}
TEXT_MODES = ("select_first", "all", "concat", "image")
JOIN = ". "


@dataclass(frozen=True)
class _Entry:
    """What one sample is made of: its id, image, and one (expression, ref, sentence) per phrase."""

    sample_id: str
    image_id: int
    phrases: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...]


def expression(sentence: dict[str, Any]) -> str:
    """The text of one refer sentence: ``raw`` lower-cased and stripped (``sent`` if raw is empty)."""
    return (sentence.get("raw") or sentence.get("sent") or "").strip().lower()


class RefCOCO(GroundingDataset):
    """One split of RefCOCO / RefCOCO+ / RefCOCOg as ``GroundingSample``s.

    ``root``: the data root above ``refcoco/`` etc.; ``image_dir`` defaults to ``root / "train2014"``.
    Samples: ``text`` is the expression (or expressions joined with ". "), one phrase per expression,
    masks (phrase, H, W) bool at the COCO image size. Sample ids look like ``refcoco(unc)/val/ref/42``.
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str = "refcoco",
        split: str = "val",
        text_mode: str = "select_first",
        split_by: str | None = None,
        image_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        if dataset not in REFER_SPLITS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(REFER_SPLITS)}")
        default_by, splits = REFER_SPLITS[dataset]
        split_by = split_by or default_by
        if split_by not in splits:
            raise ValueError(f"{dataset} has no {split_by!r} splits; choose one of {sorted(splits)}")
        if split not in splits[split_by]:
            raise ValueError(f"{dataset}({split_by}) has no split {split!r}; choose one of {splits[split_by]}")
        if text_mode not in TEXT_MODES:
            raise ValueError(f"unknown text_mode {text_mode!r}; choose one of {TEXT_MODES}")
        root = Path(root)
        self.dataset, self.split, self.split_by, self.text_mode = dataset, split, split_by, text_mode
        self.name = f"{dataset}({split_by})/{split}"
        self.image_dir = Path(image_dir) if image_dir is not None else root / "train2014"

        with (root / dataset / "instances.json").open() as f:
            coco = json.load(f)
        self.images: dict[int, dict[str, Any]] = {img["id"]: img for img in coco["images"]}
        self.annotations: dict[int, dict[str, Any]] = {ann["id"]: ann for ann in coco["annotations"]}
        refs = [r for r in safe_load(root / dataset / f"refs({split_by}).p") if r["split"] == split]
        self._entries = self._index(self._usable(refs))
        log.info("%s: %d samples from %d refs (%s mode)", self.name, len(self._entries), len(refs), text_mode)

    def _usable(self, refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The refs whose annotation and image exist and that have a non-empty expression."""
        usable = []
        for ref in refs:
            ref_key = f"{self.name}/ref/{ref['ref_id']}"
            if ref["ann_id"] not in self.annotations:
                self._skip(ref_key, "unknown annotation", f"ann_id {ref['ann_id']} is not in instances.json")
            elif ref["image_id"] not in self.images:
                self._skip(ref_key, "unknown image", f"image_id {ref['image_id']} is not in instances.json")
            elif not ref["sentences"] or not all(expression(s) for s in ref["sentences"]):
                self._skip(ref_key, "empty expression", "the ref has no sentences or an empty one")
            else:
                usable.append(ref)
        return usable

    def _index(self, refs: list[dict[str, Any]]) -> list[_Entry]:
        prefix = self.name
        if self.text_mode == "select_first":
            return [
                _Entry(f"{prefix}/ref/{r['ref_id']}", r["image_id"], ((expression(r["sentences"][0]), r, r["sentences"][0]),))
                for r in refs
            ]
        if self.text_mode == "all":
            return [
                _Entry(f"{prefix}/sent/{s['sent_id']}", r["image_id"], ((expression(s), r, s),))
                for r in refs
                for s in r["sentences"]
            ]
        if self.text_mode == "concat":
            return [
                _Entry(f"{prefix}/ref/{r['ref_id']}/concat", r["image_id"], tuple((expression(s), r, s) for s in r["sentences"]))
                for r in refs
            ]
        # text_mode == "image": group the refs by image, in the order the refs file lists them.
        by_image: dict[int, list[dict[str, Any]]] = {}
        for r in refs:
            by_image.setdefault(r["image_id"], []).append(r)
        return [
            _Entry(f"{prefix}/image/{image_id}", image_id, tuple((expression(r["sentences"][0]), r, r["sentences"][0]) for r in rs))
            for image_id, rs in by_image.items()
        ]

    def _build(self, entry: _Entry) -> GroundingSample:
        image = self.images[entry.image_id]
        height, width = int(image["height"]), int(image["width"])
        phrases, cursor = [], 0
        for text, ref, sentence in entry.phrases:
            attrs = {"ref_id": ref["ref_id"], "ann_id": ref["ann_id"], "sent_id": sentence.get("sent_id"), "category_id": ref["category_id"]}
            phrases.append(SamplePhrase(text, cursor, cursor + len(text), plural=False, is_thing=True, attributes=attrs))
            cursor += len(text) + len(JOIN)
        ann_ids = [p.attributes["ann_id"] for p in phrases]
        return GroundingSample(
            sample_id=entry.sample_id,
            image_path=self.image_dir / image["file_name"],
            image_size=(height, width),
            text=JOIN.join(p.text for p in phrases),
            phrases=phrases,
            attributes={
                "dataset": self.dataset,
                "split": self.split,
                "split_by": self.split_by,
                "text_mode": self.text_mode,
                "image_id": entry.image_id,
                "ref_ids": sorted({p.attributes["ref_id"] for p in phrases}),
                "ann_ids": sorted(set(ann_ids)),
            },
            load_masks=lambda: self._masks(ann_ids, height, width),
        )

    def _masks(self, ann_ids: list[int], height: int, width: int) -> np.ndarray:
        """(phrase, H, W) bool; an annotation shared by several phrases is decoded once."""
        decoded: dict[int, np.ndarray] = {}
        for ann_id in ann_ids:
            if ann_id not in decoded:
                try:
                    decoded[ann_id] = segmentation_to_mask(self.annotations[ann_id]["segmentation"], height, width)
                except MaskFormatError as err:
                    raise SampleError("bad segmentation", f"annotation {ann_id}: {err}") from err
        return np.stack([decoded[a] for a in ann_ids])
