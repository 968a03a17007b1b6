"""The paper's objective and schedule for a mask decoder: BCE + Dice per mask, linear warm-up then cosine.

Shared by `fit` and by any analysis that trains a decoder of its own (`analyses.grid_ceiling`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mask_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, H, W) logits and {0, 1} targets -> per-mask (BCE mean over pixels (n,), naive Dice loss (n,)).

    Naive Dice (mmdet's naive_dice): 1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps), p = sigmoid(logits).
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    p, t = logits.sigmoid().flatten(1), target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return bce, dice


def lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    """Multiplier of the base learning rate at `step` (0-based) of `total`: linear warmup, then cosine to 0."""
    warmup = int(warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


__all__ = ["lr_factor", "mask_loss"]
