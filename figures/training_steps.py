"""When grounding appears during training: the per-layer score at each checkpoint.

Input: score_records frames of several checkpoints, concatenated with a `step` column. Few layers give
a line per layer (colour = depth, bands = bootstrap CIs); many layers give a step x layer heatmap.

    fig = training_steps_figure(frame, "pointing")
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analyses.emergence import layer_curve

from .layer_curves import CURVES
from .style import COLUMN_WIDTH, RC, SEQUENTIAL, ci_text, count_text, metric_label, save

MAX_LINES = 12  # more layers than this: "auto" draws a heatmap


def step_curves(frame: pd.DataFrame, metric: str, head: str = "mean", **bootstrap: object) -> pd.DataFrame:
    """layer_curve of each step: step layer estimate low high n [head]."""
    if "step" not in frame.columns:
        raise ValueError("The frame has no `step` column: concatenate score frames of checkpoints with one.")
    parts = [
        layer_curve(part, metric, head=head, **bootstrap).assign(step=step) for step, part in frame.groupby("step", sort=True)
    ]
    return pd.concat(parts, ignore_index=True)


def _counts(frame: pd.DataFrame) -> str:
    texts = {step: count_text(part) for step, part in frame.groupby("step", sort=True)}
    if len(set(texts.values())) == 1:
        return f"{next(iter(texts.values()))} per step"
    return "; ".join(f"step {step}: {text}" for step, text in texts.items())


def training_steps_figure(
    frame: pd.DataFrame,
    metric: str = "pointing",
    head: str = "mean",
    kind: str = "auto",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Figure:
    """Per-layer `metric` of the `head` curve (layer_curve's mode) against training step.

    kind: "lines" (a line per layer with `level` cluster-bootstrap bands), "heatmap" (step x layer
    means), or "auto" (lines up to MAX_LINES layers).
    """
    curves = step_curves(frame, metric, head, n_boot=n_boot, level=level, seed=seed)
    layers = sorted(curves["layer"].unique())
    if kind == "auto":
        kind = "lines" if len(layers) <= MAX_LINES else "heatmap"
    if kind not in ("lines", "heatmap"):
        raise ValueError(f"kind must be 'auto', 'lines' or 'heatmap', got {kind!r}.")
    norm = Normalize(vmin=min(layers), vmax=max(max(layers), min(layers) + 1))
    with rc_context(RC):
        fig = Figure(figsize=(COLUMN_WIDTH, 2.9), layout="constrained")
        ax = fig.subplots()
        if kind == "lines":
            cmap = colormaps[SEQUENTIAL]
            for layer, curve in curves.groupby("layer", sort=True):
                colour = cmap(norm(layer))
                ax.fill_between(curve["step"], curve["low"], curve["high"], color=colour, alpha=0.15, lw=0)
                ax.plot(curve["step"], curve["estimate"], color=colour, marker="o", ms=2.5)
            ax.set_xlabel("training step")
            ax.set_ylabel(metric_label(metric))
            ax.grid(axis="y", lw=0.3, alpha=0.5)
            fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02, label="layer", ticks=MaxNLocator(integer=True))
            shown = f"bands: {ci_text(level, n_boot)}"
        else:
            grid = curves.pivot(index="step", columns="layer", values="estimate").sort_index()
            image = ax.imshow(grid.to_numpy(), origin="lower", aspect="auto", interpolation="nearest", cmap=SEQUENTIAL)
            ax.set_yticks(range(len(grid.index)), [str(s) for s in grid.index])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("layer")
            ax.set_ylabel("training step")
            fig.colorbar(image, ax=ax, pad=0.02, label=metric_label(metric))
            shown = "cells: means; CIs not shown (use kind=\"lines\")"
        fig.suptitle(f"{metric_label(metric)} of the {CURVES[head][0]} per layer during training\n{_counts(frame)}\n{shown}")
    return fig


def write_training_steps(frame: pd.DataFrame, path_stem: str | Path, **options: object) -> list[Path]:
    """Render `training_steps_figure(frame, **options)` to path_stem.pdf and .png."""
    return save(training_steps_figure(frame, **options), path_stem)
