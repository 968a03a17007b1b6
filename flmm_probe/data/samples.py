"""Grounding samples shared by the real datasets (RefCOCO family, PNG), and the bad-sample ledger.

A ``GroundingSample`` is one text about one image with the phrases to ground as char spans into the
text; its field names mirror the shapes world (``flmm_probe.data.shapes.Phrase``: ``text``, ``start``,
``end``, ``plural``, ``is_thing``), so code that grounds shapes-world phrases reads these too. Images
and masks are read on demand and then kept on the sample, because the dataset iterator reads them once
to check the sample and the consumer should not pay for that twice.

A ``GroundingDataset`` builds samples by index and, when iterated, yields only good samples: a sample
whose image is missing or unreadable, or whose masks cannot be made or are empty, is logged and
recorded as a ``BadSample`` (never dropped silently).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flmm_probe.images import ImageError, to_rgb

log = logging.getLogger(__name__)


class SampleError(Exception):
    """A sample cannot be used. ``kind`` is a short stable label (e.g. "missing image"); the message says what to fix."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class BadSample:
    """A sample that was skipped: which one, the kind of problem and the details."""

    sample_id: str
    kind: str
    detail: str


@dataclass(frozen=True)
class SamplePhrase:
    """A phrase to ground: ``text == sample.text[start:end]``.

    ``plural`` / ``is_thing`` are None where the dataset does not say (RefCOCO expressions refer to one
    object, so RefCOCO sets plural False and is_thing True). ``attributes``: dataset-specific ids
    (ref_id, ann_id, sent_id, segment_ids, ...).
    """

    text: str
    start: int
    end: int
    plural: bool | None = None
    is_thing: bool | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class GroundingSample:
    """One image, one text, its phrases and one mask per phrase.

    ``sample_id``: stable across runs (built from the annotation ids, never from list positions that a
    filter could shift). ``image_size``: (height, width) in pixels, the shape of every mask.
    ``attributes``: dataset, split and annotation ids. Masks come from ``load_masks`` on first use; the
    image from ``image_path``, or from ``load_image`` for generated images (the shapes world).
    """

    sample_id: str
    image_path: Path | None
    image_size: tuple[int, int]
    text: str
    phrases: list[SamplePhrase]
    attributes: dict[str, Any]
    load_masks: Callable[[], np.ndarray] = field(repr=False)
    load_image: Callable[[], Image.Image] | None = field(default=None, repr=False)
    _masks: np.ndarray | None = field(default=None, init=False, repr=False)
    _image: Image.Image | None = field(default=None, init=False, repr=False)

    @property
    def image_key(self) -> str:
        """The id of the sample's image, shared by the samples of one image: its file path, or for generated images
        the sample's scene (dataset/split/index)."""
        if self.image_path is not None:
            return str(self.image_path)
        return f"{self.attributes['dataset']}/{self.attributes['split']}/{self.attributes['index']}"

    @property
    def spans(self) -> list[tuple[int, int]]:
        """The phrases as (start, end) char spans of ``text``, the form ``flmm_probe.phrases`` takes."""
        return [(p.start, p.end) for p in self.phrases]

    def masks(self) -> np.ndarray:
        """(phrase, H, W) bool: the mask of each phrase at the original image size. Raises SampleError."""
        if self._masks is None:
            masks = np.asarray(self.load_masks(), dtype=bool)
            expected = (len(self.phrases), *self.image_size)
            if masks.shape != expected:
                raise SampleError("mask shape", f"masks are {masks.shape}, expected {expected}")
            self._masks = masks
        return self._masks

    def mask(self, index: int) -> np.ndarray:
        """(H, W) bool: the mask of phrase ``index``."""
        return self.masks()[index]

    def image(self) -> Image.Image:
        """The image as RGB PIL, decoded fully. Raises SampleError if it is missing, unreadable or of another size."""
        if self._image is None and self.load_image is not None:
            self._image = self.load_image()
        if self._image is None:
            if self.image_path is None or not self.image_path.is_file():
                raise SampleError("missing image", f"{self.image_path} does not exist; check the image folder")
            try:
                image = to_rgb(self.image_path)
            except ImageError as err:
                raise SampleError("unreadable image", str(err)) from err
            if (image.height, image.width) != self.image_size:
                raise SampleError(
                    "image size",
                    f"{self.image_path} is {image.height}x{image.width} but the annotations say "
                    f"{self.image_size[0]}x{self.image_size[1]}; the image and annotation files do not match",
                )
            self._image = image
        return self._image

    def check(self) -> None:
        """Read the image and masks; raise SampleError if either cannot be used or a mask is empty."""
        self.image()
        for phrase, mask in zip(self.phrases, self.masks()):
            if not mask.any():
                raise SampleError("empty mask", f"phrase {phrase.text!r} has an empty mask")


class GroundingDataset:
    """Samples by index; iteration yields checked samples and records the bad ones in ``bad``.

    Subclasses set ``self._entries`` (anything ``_build`` understands) and implement ``_build``; problems
    found while indexing the annotation files go to ``_index_bad`` through ``_skip``.
    """

    name = "grounding"

    def __init__(self) -> None:
        self._entries: list[Any] = []
        self._index_bad: list[BadSample] = []
        self._iter_bad: list[BadSample] = []

    def _build(self, entry: Any) -> GroundingSample:
        raise NotImplementedError

    def _skip(self, sample_id: str, kind: str, detail: str) -> None:
        """Record an annotation that cannot become a sample at all (found while indexing)."""
        log.warning("%s: skipping %s (%s: %s)", self.name, sample_id, kind, detail)
        self._index_bad.append(BadSample(sample_id, kind, detail))

    def __len__(self) -> int:
        """Number of candidate samples (bad ones found while iterating included)."""
        return len(self._entries)

    def __getitem__(self, index: int) -> GroundingSample:
        """The sample ``index``, unchecked: its image and masks are read when first asked for."""
        return self._build(self._entries[index])

    def __iter__(self) -> Iterator[GroundingSample]:
        """Checked samples in order; each bad one is logged and appended to ``bad`` instead."""
        self._iter_bad = []
        for entry in self._entries:
            sample = self._build(entry)
            try:
                sample.check()
            except SampleError as err:
                log.warning("%s: skipping %s (%s)", self.name, sample.sample_id, err)
                self._iter_bad.append(BadSample(sample.sample_id, err.kind, err.detail))
                continue
            yield sample

    @property
    def bad(self) -> list[BadSample]:
        """Samples skipped while indexing, then those skipped by the latest iteration."""
        return self._index_bad + self._iter_bad

    def bad_counts(self) -> Counter[str]:
        """How many samples were skipped, by kind of problem."""
        return Counter(b.kind for b in self.bad)


class IncompleteStoreError(ValueError):
    """A store lacks some of a dataset's good samples, and scoring them all was asked for."""


def stored_samples(dataset: GroundingDataset, stored: set[str], partial: bool = False) -> tuple[list[GroundingSample], int]:
    """The dataset's good samples whose ids are in ``stored``, and how many good samples it has in all.

    Unless ``partial``, a good sample missing from ``stored`` raises ``IncompleteStoreError`` naming how many
    and what to do: a score over part of a dataset must never pass for the whole dataset's.
    """
    good = list(dataset)
    kept = [s for s in good if s.sample_id in stored]
    missing = len(good) - len(kept)
    if missing and not partial:
        example = next(s.sample_id for s in good if s.sample_id not in stored)
        raise IncompleteStoreError(
            f"The store holds {len(kept)} of the dataset's {len(good)} good samples ({missing} missing, e.g. {example!r}): "
            "record the rest (rerun `flmm-probe record` with the same arguments: it resumes), or pass --partial "
            "(partial=True) to score the samples that are there, reported as such."
        )
    return kept, len(good)
