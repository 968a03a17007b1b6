"""One style for every figure: Okabe-Ito colours, paper-column sizes, caption helpers and `save`.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot state), inside `rc_context(RC)`:

    with rc_context(RC):
        fig = Figure(figsize=(FULL_WIDTH, 3.0), layout="constrained")
        ...
    save(fig, run_dir / "figures" / "layer_curves")   # -> layer_curves.pdf, layer_curves.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
GREY = "#7F7F7F"
# Categorical order (backbones, layers of a short list): yellow last, it is faint on white.
CATEGORICAL = [
    OKABE_ITO[c] for c in ("blue", "vermillion", "bluish_green", "orange", "reddish_purple", "sky_blue", "black", "yellow")
]
SEQUENTIAL = "viridis"  # perceptually uniform and colour-blind safe, for heatmaps and ordered lines
ATTENTION = "inferno"  # attention maps over images

COLUMN_WIDTH = 3.35  # inches: one column of a two-column paper
FULL_WIDTH = 6.9  # inches: both columns

RC = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "legend.frameon": False,
    "image.cmap": SEQUENTIAL,
    "pdf.fonttype": 42,  # TrueType in the PDF: text stays editable and searchable
    "ps.fonttype": 42,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}

METRIC_LABELS = {
    "pointing": "Pointing game",
    "mass_in_mask": "Mass in mask",
    "auroc": "AUROC",
    "best_iou": "Best IoU",
    "topk_iou": "Top-k IoU",
    "entropy": "Map entropy",
}


def metric_label(metric: str) -> str:
    """Display name of a metric of flmm_probe.metrics.MAP_METRICS (the name itself if unknown)."""
    return METRIC_LABELS.get(metric, metric)


def count_text(frame: pd.DataFrame) -> str:
    """'n = S samples / P phrases' of a score frame (columns sample, phrase)."""
    samples = frame["sample"].nunique()
    phrases = len(frame[["sample", "phrase"]].drop_duplicates())
    return f"n = {samples} samples / {phrases} phrases"


def ci_text(level: float, n_boot: int) -> str:
    """'95% CI (cluster bootstrap over samples, 1000 resamples)'."""
    return f"{level:.0%} CI (cluster bootstrap over samples, {n_boot} resamples)"


def save(fig: Figure, path_stem: str | Path) -> list[Path]:
    """Write `fig` to path_stem.pdf and path_stem.png (parents created); returns both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.{ext}" for ext in ("pdf", "png")]  # names may hold dots
    with rc_context(RC):
        for path in paths:
            fig.savefig(path)
    return paths


def image_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] from an (H, W, 3|4) or (H, W) image, uint8 or float in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image / 255.0
    image = image.astype(float)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.clip(image[..., :3], 0.0, 1.0)
