"""Score frames and emergence summaries on records with a planted grounding head."""

import numpy as np
import pytest
import torch

from analyses.emergence import baseline_table, bootstrap_mean, head_table, layer_curve
from analyses.score import MEAN_HEAD, ScoredSample, baseline_frame, score_records
from flmm_probe.record import AttentionRecord


def planted_samples(n=12, layers=3, heads=4, size=8, seed=0):
    """Records whose head (1, 2) peaks inside each phrase's mask; every other head is noise."""
    rng = np.random.default_rng(seed)
    samples = []
    for s in range(n):
        masks, maps = [], torch.from_numpy(rng.random((2, layers, heads, size, size))).float()
        for p in range(2):
            mask = np.zeros((4 * size, 4 * size), bool)
            y, x = rng.integers(0, size - 2, 2)
            mask[4 * y : 4 * y + 8, 4 * x : 4 * x + 8] = True
            masks.append(mask)
            maps[p, 1, 2, y : y + 2, x : x + 2] += 5
        record = AttentionRecord("t", ["a", "b"], [(0, 1), (2, 3)], {"global": maps}, (4 * size, 4 * size))
        samples.append(ScoredSample(f"s{s}", record, masks, [{"plural": False}, {"plural": True}]))
    return samples


def test_frame_is_tidy_and_complete():
    frame = score_records(planted_samples(n=2))
    assert list(frame.columns[:6]) == ["sample", "phrase", "layer", "head", "metric", "value"]
    assert "plural" in frame.columns
    # 2 samples x 2 phrases x 3 layers x (4 heads + mean) x 6 metrics
    assert len(frame) == 2 * 2 * 3 * 5 * 6
    assert set(frame["head"]) == {0, 1, 2, 3, MEAN_HEAD}


def test_planted_head_ranks_first_and_beats_baselines():
    samples = planted_samples()
    frame = score_records(samples)
    heads = head_table(frame, "pointing", n_boot=200)
    assert tuple(heads.loc[0, ["layer", "head"]]) == (1, 2)
    assert heads.loc[0, "estimate"] == 1.0
    best = layer_curve(frame, "pointing", head="best", n_boot=200)
    random = layer_curve(frame, "pointing", head="random", n_boot=200)
    assert best.loc[1, "head"] == 2 and best.loc[1, "estimate"] > random.loc[1, "estimate"]
    base = baseline_table(baseline_frame(samples), "pointing", n_boot=200).set_index("baseline")
    # A uniform map points inside with probability = the mask's share of cells (4 of 64).
    assert base.loc["uniform", "estimate"] == pytest.approx(4 / 64)
    assert base.loc["uniform", "estimate"] < best.loc[1, "low"]


def test_bootstrap_interval_covers_estimate_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    import pandas as pd

    def frame(n):
        return pd.DataFrame({"sample": np.arange(n), "g": 0, "value": rng.normal(1.0, 1.0, n)})

    small = bootstrap_mean(frame(20), ["g"], n_boot=500)
    large = bootstrap_mean(frame(2000), ["g"], n_boot=500)
    assert small.loc[0, "low"] < small.loc[0, "estimate"] < small.loc[0, "high"]
    assert (large.loc[0, "high"] - large.loc[0, "low"]) < (small.loc[0, "high"] - small.loc[0, "low"]) / 5
