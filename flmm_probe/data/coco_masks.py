"""COCO masks: instance segmentations (polygons, RLE) and panoptic PNGs -> boolean arrays.

Instance ``segmentation`` fields come in three published forms, all decoded by pycocotools:
- polygons: ``[[x0, y0, x1, y1, ...], ...]`` in pixel coordinates (one list per part of the object);
- uncompressed RLE: ``{"size": [H, W], "counts": [n0, n1, ...]}`` (used for iscrowd annotations);
- compressed RLE: ``{"size": [H, W], "counts": "<COCO LEB128-like string>"}``.
RLE runs are column-major (Fortran order), starting with a run of zeros; pycocotools handles that.

Panoptic PNGs store a segment id per pixel as RGB: ``id = R + 256 * G + 256**2 * B`` (0 = unlabelled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


class MaskFormatError(ValueError):
    """A segmentation is not one of the COCO forms, or its size disagrees with the image."""


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(height, width) bool mask of a COCO instance ``segmentation`` (polygons, or RLE either way)."""
    if isinstance(segmentation, list):
        if not all(isinstance(p, list) and len(p) % 2 == 0 for p in segmentation):
            raise MaskFormatError("polygon segmentation must be a list of [x0, y0, x1, y1, ...] lists")
        # Parts with under three points enclose no area; dropping them also keeps pycocotools from reading
        # a list whose first part has 4 numbers as boxes.
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise MaskFormatError(f"RLE size {segmentation['size']} differs from the image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            # JSON gives str; pycocotools' decoder wants the bytes of that string.
            rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise MaskFormatError(f"RLE counts must be a list or a string, not {type(counts).__name__}")
    else:
        raise MaskFormatError(f"unknown segmentation format {type(segmentation).__name__}; expected polygons or RLE")
    return mask_utils.decode(rle).astype(bool)


def panoptic_ids(path: str | Path) -> np.ndarray:
    """(H, W) int64 segment ids of a COCO panoptic PNG (RGB-encoded, 0 = unlabelled)."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the inverse of ``panoptic_ids`` for ids < 256**3 (used to write panoptic PNGs)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2 % 256], axis=-1).astype(np.uint8)
