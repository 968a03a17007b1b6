"""Attention by coverage: bins, geometric means and rank correlations by hand."""

import math

import numpy as np
import pytest
import torch

from analyses.coverage import BINS, coverage_bins, coverage_frame, spearman
from analyses.score import ScoredSample
from flmm_probe.record import AttentionRecord


def test_bins_split_outside_and_quarters():
    cover = torch.tensor([0.0, 0.1, 0.25, 0.49, 0.5, 0.75, 1.0])
    assert coverage_bins(cover).tolist() == [0, 1, 2, 2, 3, 4, 4]


def test_spearman_ranks_ties_by_their_mean_and_flags_constants():
    cover = np.array([0.1, 0.5, 0.5, 1.0])
    values = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    rho = spearman(values, cover)
    # cover ranks 1, 2.5, 2.5, 4 against 1..4: covariance 4.5, variances 4.5 and 5
    assert rho[0] == pytest.approx(4.5 / math.sqrt(4.5 * 5)) and rho[1] == pytest.approx(-rho[0])
    assert np.isnan(rho[2])


def test_frame_by_hand():
    # One phrase on a 2x2 grid of 4x4-pixel cells: the mask covers all of cell (0, 0), 2/16 of (0, 1), 6/16 of (1, 0).
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4, :4] = True
    mask[:2, 4] = True
    mask[4:6, :3] = True
    maps = torch.zeros(1, 1, 2, 2, 2)  # (phrase, layer, head, y, x)
    maps[0, 0, 0] = torch.tensor([[6.0, 0.5], [1.0, 0.5]])  # head 0: rises with coverage
    maps[0, 0, 1] = torch.tensor([[0.0, 1.0], [1.0, 2.0]])  # head 1: looks away, nothing on the covered cell
    record = AttentionRecord("t", ["a"], [(0, 1)], {"global": maps}, (8, 8))
    frame = coverage_frame([ScoredSample("s", record, [mask], [{"task": "res"}])], kind="global", progress=False)
    assert list(frame.index) == [(0, 0), (0, 1)] and list(frame.columns) == [*BINS, "spearman", "phrases"]
    # head 0: shares 6/8, 1/16, 1/8, 1/16 -> x 4 cells: 3, 1/4, 1/2, 1/4
    row = frame.loc[(0, 0)]
    assert row["outside"] == pytest.approx(math.log10(0.25)) and row["(0, 1/4)"] == pytest.approx(math.log10(0.25))
    assert row["[1/4, 1/2)"] == pytest.approx(math.log10(0.5)) and row["[3/4, 1]"] == pytest.approx(math.log10(3))
    assert np.isnan(row["[1/2, 3/4)"])
    assert row["spearman"] == pytest.approx(1.0) and row["phrases"] == 1
    # head 1: the covered cell's zero is floored at 1e-6 of the map; attention ranks 1, 2.5, 2.5 against
    # coverage ranks 3, 1, 2 over the touched cells
    row = frame.loc[(0, 1)]
    assert row["[3/4, 1]"] == pytest.approx(math.log10(1e-6 * 4)) and row["outside"] == pytest.approx(math.log10(2))
    assert row["spearman"] == pytest.approx(-1.5 / math.sqrt(1.5 * 2))

    with pytest.raises(ValueError, match="task 'png'"):
        coverage_frame([ScoredSample("s", record, [mask], [{"task": "res"}])], kind="global", task="png", progress=False)


def test_a_phrase_touching_fewer_than_three_cells_adds_no_correlation():
    maps = torch.rand(1, 1, 1, 4, 4)
    mask = np.zeros((16, 16), dtype=bool)
    mask[:8, :4] = True  # two cells
    record = AttentionRecord("t", ["a"], [(0, 1)], {"global": maps}, (16, 16))
    frame = coverage_frame([ScoredSample("s", record, [mask])], kind="global", progress=False)
    assert np.isnan(frame.loc[(0, 0), "spearman"]) and frame.loc[(0, 0), "phrases"] == 0
    assert not np.isnan(frame.loc[(0, 0), "[3/4, 1]"])
