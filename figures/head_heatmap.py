"""Which heads ground: a layer x head heatmap of one metric, best heads numbered, localization heads boxed.

    fig = head_heatmap_figure(scores, "pointing", localization=localization_heads(records))
    write_head_heatmap(scores, "run/figures/head_heatmap_pointing", metric="pointing")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from analyses.emergence import head_table

from .style import COLUMN_WIDTH, OKABE_ITO, RC, SEQUENTIAL, count_text, metric_label, save

OUTLINE = OKABE_ITO["vermillion"]  # visible on both ends of viridis


def head_heatmap_figure(
    scores: pd.DataFrame,
    metric: str = "pointing",
    localization: pd.DataFrame | None = None,
    top: int = 5,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Figure:
    """Mean `metric` of every (layer, head) map as a heatmap (layer 0 at the bottom).

    scores: analyses.score.score_records frame of one backbone. localization: analyses.heads
        .localization_heads table (layer head ... selected); its selected heads (all rows if it has no
        `selected` column) are outlined. top: the best heads by mean score are numbered 1..top; the
        caption gives the best head's `level` cluster-bootstrap interval.
    """
    if "backbone" in scores.columns and scores["backbone"].nunique() > 1:
        raise ValueError("One backbone per heatmap: filter the frame by its `backbone` column first.")
    table = head_table(scores, metric, n_boot=n_boot, level=level, seed=seed)
    if table.empty:
        raise ValueError(f"No per-head scores of metric {metric!r} in the frame.")
    grid = table.pivot(index="layer", columns="head", values="estimate").sort_index().sort_index(axis=1)
    layers, heads = grid.shape
    height = float(np.clip(COLUMN_WIDTH * layers / heads, 1.8, 4.5)) + 0.9
    with rc_context(RC):
        fig = Figure(figsize=(COLUMN_WIDTH, height), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(grid.to_numpy(), origin="lower", aspect="auto", cmap=SEQUENTIAL, interpolation="nearest")
        colorbar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
        colorbar.set_label(f"{metric_label(metric)} (mean)")
        low, high = image.get_clim()
        for row in table.head(top).itertuples():
            light = (row.estimate - low) / max(high - low, 1e-12) < 0.6  # dark cell: white digits
            ax.text(row.head, row.layer, str(row.rank), ha="center", va="center", fontsize=6, fontweight="bold",
                    color="white" if light else "black")
        outlined = 0
        if localization is not None:
            chosen = localization[localization["selected"]] if "selected" in localization.columns else localization
            for row in chosen.itertuples():
                box = Rectangle((row.head - 0.5, row.layer - 0.5), 1, 1, fill=False, edgecolor=OUTLINE, lw=1.2, clip_on=False)
                ax.add_patch(box)
            outlined = len(chosen)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        best = table.iloc[0]
        caption = [
            f"{metric_label(metric)} per head ({count_text(scores)})",
            f"1..{min(top, len(table))}: best heads; #1 L{best.layer:.0f}H{best['head']:.0f} {best.estimate:.2f} "
            f"[{best.low:.2f}, {best.high:.2f}], {level:.0%} CI",
        ]
        if outlined:
            caption.append(f"boxes: {outlined} localization heads")
        fig.suptitle("\n".join(caption))
    return fig


def write_head_heatmap(scores: pd.DataFrame, path_stem: str | Path, **options: object) -> list[Path]:
    """Render `head_heatmap_figure(scores, **options)` to path_stem.pdf and .png."""
    return save(head_heatmap_figure(scores, **options), path_stem)
