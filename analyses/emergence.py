"""Where grounding emerges: per-layer and per-head summaries of a score frame, with bootstrap CIs.

Input: the long frame of `analyses.score.score_records` (sample phrase layer head metric value ...).
Confidence intervals resample whole samples (a cluster bootstrap: phrases of one image are not
independent), percentile intervals.

    curve = layer_curve(frame, "pointing", head="best")    # layer estimate low high head
    heads = head_table(frame, "pointing")                   # layer head estimate low high
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .score import MEAN_HEAD


def bootstrap_mean(
    frame: pd.DataFrame, by: list[str], n_boot: int = 1000, seed: int = 0, level: float = 0.95, cluster: str = "sample"
) -> pd.DataFrame:
    """Mean of `value` per group of `by`, with a cluster-bootstrap percentile interval.

    Returns columns by + [estimate, low, high, n] (n = rows in the group). Undefined values (NaN: e.g.
    AUROC of a mask that covers every cell) are left out, so n counts the defined ones.
    """
    frame = frame[np.isfinite(frame["value"].to_numpy(float))]
    groups = frame.groupby(by, observed=True, sort=True)
    keys = groups.ngroup().to_numpy()
    clusters, cluster_ids = np.unique(frame[cluster].to_numpy(), return_inverse=True)
    sums = np.zeros((len(clusters), groups.ngroups))
    counts = np.zeros_like(sums)
    np.add.at(sums, (cluster_ids, keys), frame["value"].to_numpy(float))
    np.add.at(counts, (cluster_ids, keys), 1)
    weights = np.random.default_rng(seed).multinomial(len(clusters), np.full(len(clusters), 1 / len(clusters)), n_boot)
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = (weights @ sums) / (weights @ counts)  # (n_boot, group)
    tail = (1 - level) / 2 * 100
    out = groups.size().rename("n").reset_index()
    out["estimate"] = sums.sum(0) / counts.sum(0)
    out["low"], out["high"] = np.nanpercentile(boots, [tail, 100 - tail], axis=0)
    return out[by + ["estimate", "low", "high", "n"]]


def head_table(frame: pd.DataFrame, metric: str, **bootstrap: object) -> pd.DataFrame:
    """Every (layer, head) ranked by its mean score: layer head estimate low high n rank."""
    rows = frame[(frame["metric"] == metric) & (frame["head"] != MEAN_HEAD)]
    table = bootstrap_mean(rows, ["layer", "head"], **bootstrap)
    table["rank"] = table["estimate"].rank(ascending=False, method="first").astype(int)
    return table.sort_values("rank", ignore_index=True)


def layer_curve(frame: pd.DataFrame, metric: str, head: str = "mean", **bootstrap: object) -> pd.DataFrame:
    """Per-layer score: layer estimate low high n [head].

    head="mean": the layer's head-averaged map. head="best": the layer's best head by mean score (its
    interval does not cover the selection; compare with "random"). head="random": a head picked at
    random, i.e. each phrase's score averaged over the layer's heads.
    """
    rows = frame[frame["metric"] == metric]
    if head == "mean":
        return bootstrap_mean(rows[rows["head"] == MEAN_HEAD], ["layer"], **bootstrap)
    heads = rows[rows["head"] != MEAN_HEAD]
    if head == "random":
        per_phrase = heads.groupby(["sample", "phrase", "layer"], observed=True)["value"].mean().reset_index()
        return bootstrap_mean(per_phrase, ["layer"], **bootstrap)
    if head == "best":
        table = head_table(frame, metric, **bootstrap)
        best = table.loc[table.groupby("layer")["estimate"].idxmax()].sort_values("layer", ignore_index=True)
        return best[["layer", "estimate", "low", "high", "n", "head"]]
    raise ValueError(f"head must be 'mean', 'best' or 'random', got {head!r}.")


def baseline_table(baselines: pd.DataFrame, metric: str, **bootstrap: object) -> pd.DataFrame:
    """Per baseline (uniform, centre): baseline estimate low high n."""
    return bootstrap_mean(baselines[baselines["metric"] == metric], ["baseline"], **bootstrap)
