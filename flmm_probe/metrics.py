"""Scores of attention maps against ground-truth masks, vectorised over any leading dims.

Every map metric takes maps (..., Y, X) and mask coverage (..., Y, X) at the map's resolution (broadcast
against each other), where coverage is the fraction of each cell's area inside the mask, from
`mask_to_grid` (area / box-filter downsampling of the full-resolution mask). A cell counts as inside the
mask when its coverage is >= 0.5. `head_heatmap` turns chosen heads' maps into a heat map at the image's size,
which thresholded is attention's own mask (no parameter trained).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

INSIDE = 0.5  # coverage at which a cell counts as inside the mask
MAP_METRICS = ("pointing", "mass_in_mask", "auroc", "best_iou", "topk_iou", "entropy")


def mask_to_grid(mask: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Fraction of each cell of a (Y, X) grid covered by a boolean mask (..., H, W), by area averaging.

    Exact when H and W are multiples of Y and X; otherwise adaptive average pooling's bins (which
    overlap by at most one pixel) approximate the cells.
    """
    mask = torch.as_tensor(mask).float()
    lead = mask.shape[:-2]
    pooled = F.adaptive_avg_pool2d(mask.reshape(-1, 1, *mask.shape[-2:]), size)
    return pooled.reshape(*lead, *size)


def _flat(maps: torch.Tensor, cover: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., n) float views of maps and cover; they broadcast against each other, nothing is copied."""
    return maps.float().flatten(-2), cover.float().flatten(-2)


def _inside(cover: torch.Tensor) -> torch.Tensor:
    """(..., n) bool: the cells inside the mask (see the module docstring), from (..., n) coverage."""
    need = torch.clamp(cover.amax(-1, keepdim=True) * 0.5, max=INSIDE)
    return (cover >= need) & (cover > 0)


def pointing_game(maps: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Hit rate in [0, 1], (...): is the map's argmax cell inside the mask?

    Ties for the maximum are broken at random, in expectation (a flat map scores the share of inside
    cells, not whatever cell comes first).
    """
    maps, cover = _flat(maps, cover)
    hit = _inside(cover).float()
    # Float sums: torch sums bool tensors an order of magnitude more slowly.
    peak = (maps == maps.amax(-1, keepdim=True)).float()
    return (peak * hit).sum(-1) / peak.sum(-1)


def mass_in_mask(maps: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Share of the map's total mass that falls inside the mask (coverage-weighted), (...)."""
    maps, cover = _flat(maps, cover)
    return (maps * cover).sum(-1) / maps.sum(-1).clamp_min(torch.finfo(maps.dtype).tiny)


def _sorted_keys(maps: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row of float32 maps by value, carrying the inside flags: (values as ordered ints, flags).

    The key of a cell is its value's bit pattern (which orders like the value for non-negative floats)
    times 2 plus its flag; numpy sorts such integer keys with SIMD kernels, an order of magnitude faster
    than an argsort. Attention maps are non-negative, so the keys fit in uint32; negative values take an
    int64 path whose keys reverse the bit patterns of negative floats.
    """
    bits = np.ascontiguousarray(maps, dtype=np.float32).view(np.int32)
    if (bits >= 0).all():
        keys = np.sort((bits.view(np.uint32) << 1) | inside.astype(np.uint32), axis=-1)
    else:
        wide = bits.astype(np.int64)
        keys = np.sort(np.where(wide < 0, -(wide & 0x7FFFFFFF), wide) * 2 + inside, axis=-1)
    return keys >> 1, (keys & 1).astype(np.float32)


class _Ranked:
    """Each map's cells sorted once, ascending, with their inside flags and tie groups. Rows: (N, n)."""

    def __init__(self, maps: np.ndarray, inside: np.ndarray):
        values, self.inside = _sorted_keys(maps, inside)  # (N, n), ascending
        self.n = values.shape[-1]
        self.n_in = self.inside.sum(-1)
        index = np.arange(self.n, dtype=np.int32)
        self.starts = np.ones(values.shape, bool)  # a tie group starts here
        np.not_equal(values[:, 1:], values[:, :-1], out=self.starts[:, 1:])
        ends = np.ones(values.shape, bool)
        ends[:, :-1] = self.starts[:, 1:]
        self.first = np.maximum.accumulate(self.starts * index, axis=-1)  # start of each cell's group
        last = np.where(ends, index, np.int32(self.n - 1))
        self.last = np.minimum.accumulate(last[:, ::-1], axis=-1)[:, ::-1]  # end of each cell's group
        self.cum_in = self.inside.cumsum(-1)  # inside cells at or below each position

    def auroc(self) -> np.ndarray:
        ranks = (self.first + self.last + 2).astype(np.float64) / 2  # average 1-based rank of the tie group
        u = (self.inside * ranks).sum(-1) - self.n_in * (self.n_in + 1.0) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            return u / (self.n_in * (self.n - self.n_in))

    def best_threshold_iou(self) -> np.ndarray:
        # Thresholding at a group start keeps it and everything above it.
        taken = (self.n - np.arange(self.n)).astype(np.float32)
        hits = self.n_in[:, None] - (self.cum_in - self.inside)
        iou = hits / (taken + self.n_in[:, None] - hits)
        return np.where(self.starts, iou, -1.0).max(-1)

    def topk_iou(self, k: np.ndarray) -> np.ndarray:
        at = (self.n - k).astype(np.int64)[:, None]  # ascending position of the k-th largest value
        first = np.take_along_axis(self.first, at, -1)[:, 0]
        last = np.take_along_axis(self.last, at, -1)[:, 0]
        rows = np.arange(len(k))
        above = self.n - 1 - last
        in_above = self.n_in - self.cum_in[rows, last]
        in_tied = self.cum_in[rows, last] - self.cum_in[rows, first] + self.inside[rows, first]
        hits = in_above + (k - above) / (last - first + 1) * in_tied
        return hits / (k + self.n_in - hits)


def _ranked(maps: torch.Tensor, cover: torch.Tensor) -> tuple[_Ranked, torch.Size]:
    maps, cover = _flat(maps, cover)
    lead = torch.broadcast_shapes(maps.shape[:-1], cover.shape[:-1])
    n = maps.shape[-1]
    inside = _inside(cover).expand(*lead, n).reshape(-1, n).cpu().numpy()
    return _Ranked(maps.expand(*lead, n).reshape(-1, n).cpu().numpy(), inside), lead


def auroc(maps: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of map values separating inside from outside cells, (...).

    Equals Mann-Whitney U / (n_inside * n_outside), ties counted half. NaN where the mask has no inside
    or no outside cell.
    """
    ranked, lead = _ranked(maps, cover)
    return torch.from_numpy(ranked.auroc()).float().reshape(lead)


def best_threshold_iou(maps: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Best IoU with the mask over all thresholds of the map, (...).

    A threshold keeps the cells at or above a value, so tied cells are kept or dropped together.
    """
    ranked, lead = _ranked(maps, cover)
    return torch.from_numpy(ranked.best_threshold_iou()).float().reshape(lead)


def topk_iou(maps: torch.Tensor, cover: torch.Tensor, fraction: float | None = None) -> torch.Tensor:
    """IoU with the mask of the map's top-k cells, (...).

    fraction: share of the cells to take; None takes as many cells as the mask has inside cells (the
    map is then judged at the right size, only its placement matters). Cells tied with the k-th value
    are taken in expectation over random tie-breaking, so a flat map scores its chance level.
    """
    ranked, lead = _ranked(maps, cover)
    k = ranked.n_in if fraction is None else np.full(len(ranked.n_in), round(fraction * ranked.n))
    return torch.from_numpy(ranked.topk_iou(np.clip(k, 1, ranked.n))).float().reshape(lead)


def map_scores(maps: torch.Tensor, cover: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every map metric at once, sorting each map once: {name: (...)} for the names in MAP_METRICS."""
    ranked, lead = _ranked(maps, cover)
    scores = {
        "pointing": pointing_game(maps, cover),
        "mass_in_mask": mass_in_mask(maps, cover),
        "auroc": torch.from_numpy(ranked.auroc()).float().reshape(lead),
        "best_iou": torch.from_numpy(ranked.best_threshold_iou()).float().reshape(lead),
        "topk_iou": torch.from_numpy(ranked.topk_iou(np.clip(ranked.n_in, 1, ranked.n))).float().reshape(lead),
        "entropy": spatial_entropy(maps).expand(lead),
    }
    return scores


def spatial_entropy(maps: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of the map normalised to sum 1, divided by log(cells): 0 = one cell, 1 = uniform."""
    flat = maps.float().flatten(-2).clamp_min(0)
    total = flat.sum(-1)
    # H = -sum p log p with p = m / total, in one pass: log(total) - sum(m log m) / total.
    entropy = torch.log(total) - torch.xlogy(flat, flat).sum(-1) / total
    return entropy / np.log(flat.shape[-1])


# ---- segmentation metrics: RES (cIoU, gIoU, precision@IoU) and PNG average recall ---------------------

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
AR_STEP = 1e-5


def intersection_union(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """(intersection, union) pixel counts of two boolean (H, W) masks at the original image size."""
    pred, target = torch.as_tensor(pred).bool(), torch.as_tensor(target).bool()
    if pred.shape != target.shape:
        raise ValueError(f"Prediction {tuple(pred.shape)} and mask {tuple(target.shape)} differ in size.")
    return int((pred & target).sum()), int((pred | target).sum())


def res_scores(intersections: np.ndarray, unions: np.ndarray) -> dict[str, float]:
    """Referring-expression segmentation scores of a split from per-expression pixel counts.

    cIoU = sum of intersections / sum of unions; gIoU = mean per-expression IoU (an empty prediction of an
    empty mask scores 1); P@t = share of expressions with IoU >= t.
    """
    intersections, unions = np.asarray(intersections, float), np.asarray(unions, float)
    iou = np.where(unions > 0, intersections / np.maximum(unions, 1), 1.0)
    scores = {"cIoU": float(intersections.sum() / max(unions.sum(), 1)), "gIoU": float(iou.mean())}
    scores.update({f"P@{t:.1f}": float((iou >= t).mean()) for t in PRECISION_THRESHOLDS})
    return scores


def average_recall(iou: np.ndarray, step: float = AR_STEP) -> float:
    """PNG average recall: the area under recall(IoU >= t) for t in [0, 1), as the reference sums it.

    The reference adds step * recall(t_i) for t_i = 0, step, ..., 1 - 2*step (a left Riemann sum). Each
    phrase then contributes step * (number of t_i <= its IoU), computed here in closed form.
    """
    iou = np.asarray(iou, float)
    if iou.size == 0:
        return float("nan")
    n_thresholds = round(1 / step) - 1
    counted = np.minimum(np.floor(iou / step + 1e-9) + 1, n_thresholds)
    return float((step * counted).mean())


def head_heatmap(maps: torch.Tensor, heads: Sequence[tuple[int, int]], image_size: tuple[int, int]) -> torch.Tensor:
    """(phrase, H, W) in [0, 1]: the chosen heads' maps, each min-max normalised, averaged, resized to
    the image (bilinear) and normalised again. maps: (phrase, layer, head, y, x) image-space canvases."""
    layers, cols = zip(*heads)
    chosen = maps[:, list(layers), list(cols)]  # (phrase, K, y, x)
    low = chosen.amin((-2, -1), keepdim=True)
    high = chosen.amax((-2, -1), keepdim=True)
    mean = ((chosen - low) / (high - low).clamp_min(1e-12)).mean(1, keepdim=True)
    heat = F.interpolate(mean, size=image_size, mode="bilinear", align_corners=False)[:, 0]
    low, high = heat.amin((-2, -1), keepdim=True), heat.amax((-2, -1), keepdim=True)
    return (heat - low) / (high - low).clamp_min(1e-12)
