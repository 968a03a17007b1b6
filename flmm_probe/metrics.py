"""Scores of attention maps against ground-truth masks, vectorised over any leading dims.

Every map metric takes maps (..., Y, X) and mask coverage (..., Y, X) at the map's resolution (broadcast
against each other), where coverage is the fraction of each cell's area inside the mask, from
`mask_to_grid` (area / box-filter downsampling of the full-resolution mask). A cell counts as inside the
mask when its coverage is >= 0.5.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

INSIDE = 0.5  # coverage at which a cell counts as inside the mask


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
    maps, cover = torch.broadcast_tensors(maps.float(), cover.float())
    return maps.flatten(-2), cover.flatten(-2)


def pointing_game(maps: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Hit (bool, (...)) when the map's argmax cell is inside the mask.

    For masks smaller than a cell, where no cell reaches 0.5 coverage, the argmax cell must hold at
    least half the best cell's coverage.
    """
    maps, cover = _flat(maps, cover)
    at_peak = cover.gather(-1, maps.argmax(-1, keepdim=True)).squeeze(-1)
    need = torch.clamp(cover.amax(-1) * 0.5, max=INSIDE)
    return (at_peak >= need) & (at_peak > 0)


def mass_in_mask(maps: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Share of the map's total mass that falls inside the mask (coverage-weighted), (...)."""
    maps, cover = _flat(maps, cover)
    return (maps * cover).sum(-1) / maps.sum(-1).clamp_min(torch.finfo(maps.dtype).tiny)


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dim, ties sharing their average rank (as scipy.stats.rankdata)."""
    n = values.shape[-1]
    order = values.argsort(-1)
    ordered = values.gather(-1, order)
    index = torch.arange(n, device=values.device).expand_as(ordered)
    new_group = torch.ones_like(ordered, dtype=torch.bool)
    new_group[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    first = torch.where(new_group, index, 0).cummax(-1).values
    last_group = torch.ones_like(new_group)
    last_group[..., :-1] = new_group[..., 1:]
    last = torch.where(last_group, index, n - 1).flip(-1).cummin(-1).values.flip(-1)
    ranks = torch.empty_like(ordered)
    ranks.scatter_(-1, order, (first + last).to(ordered.dtype) / 2 + 1)
    return ranks


def auroc(maps: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of map values separating inside from outside cells, (...).

    Equals Mann-Whitney U / (n_inside * n_outside), ties counted half. NaN where the mask has no inside
    or no outside cell.
    """
    maps, cover = _flat(maps.double(), cover)
    inside = cover >= INSIDE
    n_in = inside.sum(-1).double()
    n_out = inside.shape[-1] - n_in
    rank_sum = (_average_ranks(maps) * inside).sum(-1)
    u = rank_sum - n_in * (n_in + 1) / 2
    return (u / (n_in * n_out)).float()


def best_threshold_iou(maps: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Best IoU with the mask over all thresholds of the map, (...).

    Thresholding keeps the top-j cells; only j that end a run of equal values are thresholds (tied
    cells are kept or dropped together).
    """
    maps, cover = _flat(maps, cover)
    inside = (cover >= INSIDE).float()
    order = maps.argsort(-1, descending=True)
    ranked_values = maps.gather(-1, order)
    hits = inside.gather(-1, order).cumsum(-1)
    taken = torch.arange(1, maps.shape[-1] + 1, device=maps.device, dtype=hits.dtype)
    iou = hits / (taken + inside.sum(-1, keepdim=True) - hits)
    is_threshold = torch.ones_like(iou, dtype=torch.bool)
    is_threshold[..., :-1] = ranked_values[..., 1:] != ranked_values[..., :-1]
    return iou.masked_fill(~is_threshold, -1.0).amax(-1)


def topk_iou(maps: torch.Tensor, cover: torch.Tensor, fraction: float | None = None) -> torch.Tensor:
    """IoU with the mask of the map's top-k cells, (...).

    fraction: share of the cells to take; None takes as many cells as the mask has inside cells (the
    map is then judged at the right size, only its placement matters). Cells tied with the k-th value
    are taken in expectation over random tie-breaking, so a flat map scores its chance level.
    """
    maps, cover = _flat(maps, cover)
    inside = (cover >= INSIDE).float()
    n = maps.shape[-1]
    k = inside.sum(-1) if fraction is None else torch.full(maps.shape[:-1], float(round(fraction * n)), device=maps.device)
    k = k.clamp(1, n)
    kth = maps.sort(-1, descending=True).values.gather(-1, (k.long() - 1).unsqueeze(-1))
    above, tied = (maps > kth).float(), (maps == kth).float()
    share_tied = (k - above.sum(-1)) / tied.sum(-1)
    hits = (inside * above).sum(-1) + share_tied * (inside * tied).sum(-1)
    return hits / (k + inside.sum(-1) - hits)


def spatial_entropy(maps: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of the map normalised to sum 1, divided by log(cells): 0 = one cell, 1 = uniform."""
    flat = maps.float().flatten(-2).clamp_min(0)
    p = flat / flat.sum(-1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
    entropy = -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(-1)
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
