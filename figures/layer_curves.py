"""Where grounding emerges: per-layer curves with bootstrap CIs, one panel per metric.

Curves (analyses.emergence.layer_curve): the layer's head-averaged map, its best head, a head picked at
random; baselines (analyses.emergence.baseline_table): a uniform map and a centre prior, as horizontal
lines with their CI bands. A `backbone` column in the frames puts several backbones on one axis (colour =
backbone, line style = curve); when their layer counts differ the x axis becomes relative depth.

    fig = layer_curves_figure(scores, baselines)         # scores: analyses.score.score_records frame
    write_layer_curves(scores, baselines, "run/figures/layer_curves")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analyses.emergence import baseline_table, layer_curve

from .style import CATEGORICAL, COLUMN_WIDTH, FULL_WIDTH, GREY, OKABE_ITO, RC, ci_text, count_text, metric_label, save

LAYER_METRICS = ("pointing", "auroc", "mass_in_mask", "best_iou")
# kind -> (legend label, line style, colour when one backbone is shown)
CURVES = {
    "mean": ("head-averaged map", "-", OKABE_ITO["blue"]),
    "best": ("best head", "--", OKABE_ITO["vermillion"]),
    "random": ("random head", ":", OKABE_ITO["bluish_green"]),
}
BASELINES = {
    "uniform": ("uniform map", "-.", GREY),
    "centre": ("centre prior", (0, (4, 1.5, 1, 1.5, 1, 1.5)), OKABE_ITO["black"]),
}


def by_backbone(frame: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """[(backbone, rows)] per value of a `backbone` column, or [(None, frame)] without one."""
    if "backbone" not in frame.columns:
        return [(None, frame)]
    return [(str(name), part) for name, part in frame.groupby("backbone", sort=True, observed=True)]


def _check_metrics(frame: pd.DataFrame, metrics: Sequence[str]) -> None:
    present = set(frame["metric"].astype(str).unique())
    missing = [m for m in metrics if m not in present]
    if missing:
        raise ValueError(f"Metrics {missing} are not in the score frame; it holds {sorted(present)}.")


def _legend_handles(backbones: list[str | None], heads: Sequence[str], baselines: Sequence[str]) -> list[Line2D]:
    """Colour = curve kind for one backbone; colour = backbone and line style = kind for several."""
    if len(backbones) == 1:
        kinds = [CURVES[h] for h in heads] + [BASELINES[b] for b in baselines]
        return [Line2D([], [], color=colour, ls=style, label=label) for label, style, colour in kinds]
    handles = [Line2D([], [], color=CATEGORICAL[i % len(CATEGORICAL)], lw=3, label=name) for i, name in enumerate(backbones)]
    kinds = [CURVES[h] for h in heads] + [BASELINES[b] for b in baselines]
    return handles + [Line2D([], [], color=GREY, ls=style, label=label) for label, style, _ in kinds]


def layer_curves_figure(
    scores: pd.DataFrame,
    baselines: pd.DataFrame | None = None,
    metrics: Sequence[str] = LAYER_METRICS,
    heads: Sequence[str] = ("mean", "best", "random"),
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Figure:
    """Per-layer grounding curves, one panel per metric.

    scores: analyses.score.score_records frame (sample phrase layer head metric value [+ backbone]).
    baselines: analyses.score.baseline_frame frame (sample phrase baseline metric value [+ backbone]);
        matched to `scores` by backbone. heads: which layer_curve modes to draw.
    Shaded bands and baseline bands are `level` cluster-bootstrap intervals over samples.
    """
    _check_metrics(scores, metrics)
    groups = by_backbone(scores)
    base_groups = dict(by_backbone(baselines)) if baselines is not None else {}
    layer_counts = {name: part["layer"].max() + 1 for name, part in groups}
    relative = len(set(layer_counts.values())) > 1
    multi = len(groups) > 1
    drawn_baselines: list[str] = []
    ncols = min(2, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    with rc_context(RC):
        fig = Figure(figsize=(FULL_WIDTH if ncols == 2 else COLUMN_WIDTH, 1.9 * nrows + 0.9), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
        for ax, metric in zip(axes, metrics):
            for i, (name, part) in enumerate(groups):
                scale = max(layer_counts[name] - 1, 1) if relative else 1
                for head in heads:
                    _, style, colour = CURVES[head]
                    colour = CATEGORICAL[i % len(CATEGORICAL)] if multi else colour
                    curve = layer_curve(part, metric, head=head, n_boot=n_boot, level=level, seed=seed)
                    x = curve["layer"] / scale
                    ax.fill_between(x, curve["low"], curve["high"], color=colour, alpha=0.18, lw=0)
                    ax.plot(x, curve["estimate"], color=colour, ls=style)
                if name not in base_groups:
                    continue
                table = baseline_table(base_groups[name], metric, n_boot=n_boot, level=level, seed=seed)
                for row in table.itertuples():
                    _, style, colour = BASELINES[row.baseline]
                    colour = CATEGORICAL[i % len(CATEGORICAL)] if multi else colour
                    ax.axhspan(row.low, row.high, color=colour, alpha=0.1, lw=0)
                    ax.axhline(row.estimate, color=colour, ls=style, lw=0.9)
                    if row.baseline not in drawn_baselines:
                        drawn_baselines.append(row.baseline)
            ax.set_title(metric_label(metric))
            ax.grid(axis="y", lw=0.3, alpha=0.5)
            if not relative:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in axes[len(metrics) :]:
            ax.remove()
        for index, ax in enumerate(axes[: len(metrics)]):
            if index + ncols >= len(metrics):  # nothing drawn below this panel
                ax.set_xlabel("relative depth (layer / last layer)" if relative else "layer")
                ax.xaxis.set_tick_params(labelbottom=True)
        handles = _legend_handles([name for name, _ in groups], heads, [b for b in BASELINES if b in drawn_baselines])
        rows = 1 if len(groups) == 1 else max(len(groups), 2)  # several backbones: they fill the first column
        fig.legend(handles=handles, loc="outside lower center", ncols=math.ceil(len(handles) / rows))
        counts = "; ".join(f"{name}: {count_text(part)}" if name else count_text(part) for name, part in groups)
        fig.suptitle(f"Grounding per layer ({counts})\nbands: {ci_text(level, n_boot)}; the best head is chosen on the same data")
    return fig


def write_layer_curves(
    scores: pd.DataFrame, baselines: pd.DataFrame | None, path_stem: str | Path, **options: object
) -> list[Path]:
    """Render `layer_curves_figure(scores, baselines, **options)` to path_stem.pdf and .png."""
    return save(layer_curves_figure(scores, baselines, **options), path_stem)
