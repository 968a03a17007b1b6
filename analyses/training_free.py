"""How far attention alone gets: masks from the top-K heads, with and without SAM prompts.

No parameter is trained. For each phrase, the maps of K chosen heads are each normalised to [0, 1],
averaged, resized to the image, and thresholded; optionally SAM (`segment_anything.SamPredictor`)
turns that into a mask from a box around it, a point at its peak, or both. Choose the heads on other
samples than those you evaluate (e.g. analyses.emergence.head_table on a selection split): choosing
them on the test samples flatters the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from segment_anything import SamPredictor

from flmm_probe.metrics import head_heatmap, intersection_union, mask_to_grid, res_scores

from .score import ScoredSample, centre_prior, record_maps

METHODS = ("attention", "sam_box", "sam_point", "sam_box_point")
# A whole-image mask; the centre prior thresholded like the heat maps; and the grid oracle: each phrase's
# true mask pooled to the record's grid (the fraction of each cell it covers), decoded like the heads'
# maps. The oracle is the best any single map on that grid can do with this decoding: a coarse grid
# caps the method before the heads do.
BASELINES = ("uniform", "centre", "grid_oracle")


def grid_oracle(masks: Sequence[np.ndarray], grid: tuple[int, int]) -> torch.Tensor:
    """(phrase, 1, 1, y, x): the fraction of each grid cell that each (H, W) bool mask covers, shaped as
    one layer and one head of maps."""
    return mask_to_grid(np.stack(masks), grid)[:, None, None]


def _box(mask: np.ndarray) -> np.ndarray:
    """XYXY pixel box around a boolean mask (the whole image if it is empty)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.array([0, 0, mask.shape[1] - 1, mask.shape[0] - 1], float)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], float)


def training_free_masks(
    image: np.ndarray,
    heat: torch.Tensor,
    threshold: float = 0.5,
    predictor: SamPredictor | None = None,
) -> dict[str, np.ndarray]:
    """{method: (phrase, H, W) bool} for one image. image: HxWx3 uint8; heat: (phrase, H, W) in [0, 1].

    "attention" thresholds the heat map; with a predictor, "sam_box" prompts SAM with the box around
    that mask, "sam_point" with the heat map's peak as a foreground point, "sam_box_point" with both.
    """
    attention = (heat >= threshold).numpy()
    out = {"attention": attention}
    if predictor is None:
        return out
    predictor.set_image(image)
    for method in METHODS[1:]:
        masks = []
        for phrase_heat, mask in zip(heat, attention):
            peak = np.array(np.unravel_index(int(phrase_heat.argmax()), phrase_heat.shape)[::-1], float)[None]
            prompts = {}
            if "box" in method:
                prompts["box"] = _box(mask)
            if "point" in method:
                prompts["point_coords"], prompts["point_labels"] = peak, np.array([1])
            predicted, _, _ = predictor.predict(multimask_output=False, **prompts)
            masks.append(predicted[0])
        out[method] = np.stack(masks)
    return out


def evaluate_training_free(
    samples: Iterable[tuple[ScoredSample, np.ndarray]],
    heads: Sequence[tuple[int, int]],
    threshold: float = 0.5,
    predictor: SamPredictor | None = None,
    kind: str = "fused",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training-free masks of every phrase, scored like the fitted decoder.

    samples: (scored sample, its image HxWx3 uint8). Returns (per phrase: sample phrase method
    intersection union iou, per method: the RES scores cIoU gIoU P@0.5..0.9). The methods include the
    map-free baselines of BASELINES.
    """
    rows = []
    for sample, image in samples:
        maps = record_maps(sample.record, kind)
        size = image.shape[:2]
        heat = head_heatmap(maps, heads, size)
        n = len(sample.masks)
        centre = centre_prior(size, sigma=0.25)
        oracle = head_heatmap(grid_oracle(sample.masks, maps.shape[-2:]), [(0, 0)], size)
        baselines = {"uniform": np.ones((n, *size), bool), "centre": np.repeat((centre >= threshold).numpy()[None], n, axis=0),
                     "grid_oracle": (oracle >= threshold).numpy()}
        predicted = {**training_free_masks(image, heat, threshold, predictor), **baselines}
        for method, masks in predicted.items():
            for phrase, (pred, truth) in enumerate(zip(masks, sample.masks)):
                inter, union = intersection_union(pred, truth)
                rows.append({"sample": sample.sample_id, "phrase": phrase, "method": method,
                             "intersection": inter, "union": union, "iou": inter / union if union else 1.0})
    per_phrase = pd.DataFrame(rows)
    summary = pd.DataFrame(
        [{"method": m, **res_scores(g["intersection"], g["union"])} for m, g in per_phrase.groupby("method", sort=False)]
    )
    return per_phrase, summary
