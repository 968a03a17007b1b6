"""Words or position (analyses.counterfactual): per layer, does the best head follow a phrase's words or its slot?

Left: per layer, the head that points at the named object most often in permuted texts, with its pointing at
the named object (permuted and original text), at the object its slot held, and at the object of its slot's
left-to-right rank, each with its CI band. Right: every head's named - slot difference in permuted texts
(positive: follows words; negative: follows position).

    write_counterfactual(table, "run/figures/counterfactual")   # table: analyses.counterfactual.counterfactual_table
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analyses.score import MEAN_HEAD

from .style import FULL_WIDTH, GREY, OKABE_ITO, RC, save

# (order, metric) -> (legend label, line style, colour)
CURVES = {
    ("permuted", "named"): ("named object, permuted text", "-", OKABE_ITO["blue"]),
    ("original", "named"): ("named object, original text", ":", OKABE_ITO["sky_blue"]),
    ("permuted", "slot"): ("object its slot held", "--", OKABE_ITO["vermillion"]),
    ("permuted", "rank"): ("object of its slot's left-to-right rank", "-.", GREY),
}


def _best_heads(table: pd.DataFrame) -> pd.DataFrame:
    """layer head: per layer, the head with the highest permuted-text named pointing."""
    named = table[(table["order"] == "permuted") & (table["metric"] == "named") & (table["head"] != MEAN_HEAD)]
    return named.loc[named.groupby("layer")["estimate"].idxmax(), ["layer", "head"]].sort_values("layer")


def counterfactual_figure(table: pd.DataFrame) -> Figure:
    """The two panels described in the module docstring."""
    heads = table[table["head"] != MEAN_HEAD]
    best = _best_heads(table)
    with rc_context(RC):
        fig = Figure(figsize=(FULL_WIDTH, 2.6), layout="constrained")
        left, right = fig.subplots(1, 2, width_ratios=[1.3, 1])
        for (order, metric), (label, style, colour) in CURVES.items():
            rows = best.merge(heads[(heads["order"] == order) & (heads["metric"] == metric)], on=["layer", "head"])
            left.plot(rows["layer"], rows["estimate"], ls=style, color=colour, label=label, marker="o", ms=2.5)
            left.fill_between(rows["layer"], rows["low"], rows["high"], color=colour, alpha=0.15, lw=0)
        left.set(xlabel="layer (its best head)", ylabel="pointing game", ylim=(-0.02, 1.02))
        left.xaxis.set_major_locator(MaxNLocator(integer=True))
        left.legend(loc="best")
        diff = heads[(heads["order"] == "permuted") & (heads["metric"] == "named_minus_slot")]
        grid = diff.pivot(index="layer", columns="head", values="estimate").sort_index()
        image = right.imshow(grid.to_numpy(float), cmap="RdBu", vmin=-1, vmax=1, aspect="auto", origin="lower")
        right.set(xlabel="head", ylabel="layer", title="named − slot (permuted text)")
        right.set_xticks(np.arange(grid.shape[1]), grid.columns)
        right.set_yticks(np.arange(grid.shape[0]), grid.index)
        fig.colorbar(image, ax=right, shrink=0.9)
    return fig


def write_counterfactual(table: pd.DataFrame, path_stem: str | Path) -> list[Path]:
    """Render and save as PDF + PNG; returns the paths."""
    return save(counterfactual_figure(table), path_stem)
