"""Localization heads, spatial entropy, elbow, attention sinks."""

import numpy as np
import torch

from analyses.heads import drop_sinks, elbow, localization_heads, sink_cells, spatial_entropy
from analyses.score import ScoredSample, score_records
from flmm_probe.record import AttentionRecord


def test_elbow_keeps_the_high_shoulder():
    assert elbow(np.array([10, 9.5, 9, 1, 0.9, 0.8, 0.7, 0.6])) == 3
    assert elbow(np.array([1.0, 1.0])) == 2


def test_spatial_entropy_blob_vs_scatter():
    blob = np.zeros((8, 8))
    blob[2:5, 2:5] = 1
    scatter = np.zeros((8, 8))
    scatter[::3, ::3] = 1  # nine separate islands
    values = spatial_entropy(np.stack([blob, scatter]))
    assert values[0] == 0.0
    assert values[1] == np.log(9)


def make_record(rng, layers=2, heads=4, size=8, phrases=3):
    maps = torch.from_numpy(rng.random((phrases, layers, heads, size, size))).float()
    for p in range(phrases):  # head (1, 3): one compact blob per phrase
        maps[p, 1, 3] = 0
        y, x = rng.integers(0, size - 3, 2)
        maps[p, 1, 3, y : y + 3, x : x + 3] = 1
        maps[p, 0, 0] = 0  # head (0, 0): high image mass too, but scattered over nine islands
        maps[p, 0, 0, ::3, ::3] = 1
    mass = torch.full((phrases, layers, heads), 0.05)
    mass[:, 1, 3] = 0.6
    mass[:, 0, 0] = 0.5
    norms = torch.ones(layers, 2, size, size)
    norms[1, 1, 0, 0] = 20.0  # one high-norm key in layer 1, kv head 1 (query heads 2 and 3)
    return AttentionRecord("t", ["a"] * phrases, [(0, 1)] * phrases, {"global": maps}, (32, 32), image_mass=mass, key_norms={"global": norms})


def test_localization_heads_finds_the_compact_high_mass_head():
    rng = np.random.default_rng(0)
    table = localization_heads([make_record(rng) for _ in range(4)], top=1, select=1)
    assert tuple(table.loc[0, ["layer", "head"]]) == (1, 3)
    assert table.loc[0, "low_entropy_share"] == 1.0 and table.loc[0, "selected"]
    assert set(map(tuple, table[table["passes_mass"]][["layer", "head"]].to_numpy())) == {(1, 3), (0, 0)}


def test_sinks_follow_their_kv_head_and_can_be_dropped():
    record = make_record(np.random.default_rng(1))
    sinks = sink_cells(record, "global")
    assert sinks.shape == (2, 4, 8, 8)
    assert torch.nonzero(sinks).tolist() == [[1, 2, 0, 0], [1, 3, 0, 0]]
    maps = drop_sinks(record.maps["global"], sinks)
    assert bool((maps[:, 1, 2:, 0, 0] == 0).all()) and torch.equal(maps[:, 0], record.maps["global"][:, 0])
    mask = np.zeros((32, 32), bool)
    mask[:4, :4] = True  # the sink cell is inside the mask: dropping it must change the scores
    sample = ScoredSample("s", record, [mask] * 3)
    kept = score_records([sample]).set_index(["phrase", "layer", "head", "metric"])["value"]
    dropped = score_records([sample], sinks=True).set_index(["phrase", "layer", "head", "metric"])["value"]
    assert kept.loc[(0, 0, 0, "mass_in_mask")] == dropped.loc[(0, 0, 0, "mass_in_mask")]
    assert kept.loc[(0, 1, 2, "mass_in_mask")] > dropped.loc[(0, 1, 2, "mass_in_mask")]
