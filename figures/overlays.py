"""What the best heads look at: one phrase's image, its mask contour and the top-k heads' maps.

    values = head_scores(scores, "s0", 1, "pointing")            # (layer, head) from a score frame
    fig = overlays_figure(image, mask, record.fused()[1], values, "pointing", sample="s0", phrase="a red sofa")
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib import rc_context
from matplotlib.figure import Figure

from .style import ATTENTION, FULL_WIDTH, OKABE_ITO, RC, image_rgb, metric_label, save

CONTOUR = OKABE_ITO["sky_blue"]  # visible on both ends of the attention colour map


def head_scores(scores: pd.DataFrame, sample: str, phrase: int, metric: str) -> np.ndarray:
    """(layer, head) values of one phrase's per-head maps in a score_records frame (NaN where absent)."""
    keep = (scores["sample"] == sample) & (scores["phrase"] == phrase) & (scores["metric"] == metric)
    rows = scores[keep & (scores["head"] >= 0)]
    if rows.empty:
        raise ValueError(f"No {metric!r} scores of sample {sample!r}, phrase {phrase} in the frame.")
    grid = rows.pivot(index="layer", columns="head", values="value")
    return grid.reindex(index=range(grid.index.max() + 1), columns=range(grid.columns.max() + 1)).to_numpy(float)


def top_heads(values: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The k (layer, head) pairs of a (layer, head) array with the highest values, best first (NaN last)."""
    order = np.argsort(np.nan_to_num(-values, nan=np.inf), axis=None, kind="stable")[:k]
    return [tuple(int(i) for i in np.unravel_index(o, values.shape)) for o in order]


def _upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(y, x) map -> (H, W), bilinear, then min-max normalised to [0, 1]."""
    batch = torch.as_tensor(grid, dtype=torch.float32)[None, None]
    up = F.interpolate(batch, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    span = up.max() - up.min()
    return (up - up.min()) / span if span > 0 else np.zeros_like(up)


def overlays_figure(
    image: np.ndarray,
    mask: np.ndarray,
    maps: np.ndarray | torch.Tensor,
    values: np.ndarray,
    metric: str,
    k: int = 7,
    sample: str = "",
    phrase: str = "",
    ncols: int = 4,
) -> Figure:
    """The image with the mask contour, then the k best heads' maps over it, "L{layer}H{head}: score".

    image: (H, W, 3) uint8 or float in [0, 1]; mask: (H, W) bool at the image size; maps: (layer, head,
    y, x) one phrase's maps (e.g. record.fused()[phrase]); values: (layer, head) that phrase's `metric`
    per head, which ranks the heads. Each map is upsampled bilinearly and min-max normalised.
    """
    rgb, mask = image_rgb(image), np.asarray(mask, bool)
    maps = np.asarray(maps, dtype=np.float32)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"Mask {mask.shape} and image {rgb.shape[:2]} differ in size.")
    if maps.shape[:2] != values.shape:
        raise ValueError(f"Maps have (layer, head) = {maps.shape[:2]} but values {values.shape}.")
    chosen = top_heads(values, k)
    panels = len(chosen) + 1
    ncols = min(ncols, panels)
    nrows = math.ceil(panels / ncols)
    panel = FULL_WIDTH / ncols
    height, width = rgb.shape[:2]
    with rc_context(RC):
        fig = Figure(figsize=(FULL_WIDTH, nrows * (panel * height / width + 0.25) + 0.45), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in axes:
            ax.set_axis_off()
        axes[0].imshow(rgb)
        axes[0].contour(mask, levels=[0.5], colors=[CONTOUR], linewidths=1.0)
        axes[0].set_title(f"\u201c{phrase}\u201d" if phrase else "image + mask")
        for ax, (layer, head) in zip(axes[1:], chosen):
            heat = _upsample(maps[layer, head], (height, width))
            ax.imshow(rgb)
            ax.imshow(heat, cmap=ATTENTION, alpha=0.8 * heat, vmin=0, vmax=1)
            ax.contour(mask, levels=[0.5], colors=[CONTOUR], linewidths=0.8)
            ax.set_title(f"L{layer}H{head}: {values[layer, head]:.2f}")
        where = f"sample {sample}, " if sample else ""
        fig.suptitle(
            f"Top-{len(chosen)} of {values.size} heads by {metric_label(metric)} "
            f"({where}n = 1 phrase; single-phrase scores, no CI)\n"
            "maps upsampled bilinearly, min-max normalised per head; contour: ground-truth mask"
        )
    return fig


def write_overlays(
    image: np.ndarray,
    mask: np.ndarray,
    maps: np.ndarray,
    values: np.ndarray,
    metric: str,
    path_stem: str | Path,
    **options: object,
) -> list[Path]:
    """Render `overlays_figure(...)` to path_stem.pdf and .png."""
    return save(overlays_figure(image, mask, maps, values, metric, **options), path_stem)
