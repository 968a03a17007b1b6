"""Map metrics on hand-made maps and masks, and AUROC against scipy's Mann-Whitney U."""

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from flmm_probe.metrics import (
    auroc,
    best_threshold_iou,
    mask_to_grid,
    mass_in_mask,
    pointing_game,
    spatial_entropy,
    topk_iou,
)


def square_mask(size=8, box=(2, 2, 5, 5)):
    mask = torch.zeros(size, size)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1
    return mask


def test_delta_inside_and_outside():
    cover = square_mask()
    inside, outside = torch.zeros(8, 8), torch.zeros(8, 8)
    inside[3, 3] = 1
    outside[7, 0] = 1
    maps = torch.stack([inside, outside])
    assert pointing_game(maps, cover).tolist() == [1.0, 0.0]
    assert mass_in_mask(maps, cover).tolist() == [1.0, 0.0]
    assert spatial_entropy(inside).item() == pytest.approx(0.0)


def test_uniform_map():
    cover = square_mask()
    uniform = torch.ones(8, 8)
    assert mass_in_mask(uniform, cover).item() == pytest.approx(9 / 64)
    assert pointing_game(uniform, cover).item() == pytest.approx(9 / 64)  # chance, ties broken at random
    assert auroc(uniform, cover).item() == pytest.approx(0.5)  # all ties
    assert spatial_entropy(uniform).item() == pytest.approx(1.0)
    assert best_threshold_iou(uniform, cover).item() == pytest.approx(9 / 64)  # best: take every cell


def test_map_on_the_boundary_and_perfect_map():
    cover = square_mask()
    ring = torch.zeros(8, 8)
    ring[1, 1:6] = 1  # the row just above the mask
    assert pointing_game(ring, cover).item() == 0
    assert auroc(ring, cover).item() < 0.5
    assert best_threshold_iou(cover, cover).item() == 1.0
    assert topk_iou(cover + 0.01 * torch.rand(8, 8), cover).item() == 1.0
    assert topk_iou(cover, cover, fraction=18 / 64).item() == pytest.approx(0.5)


def test_auroc_equals_mann_whitney_with_ties():
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 5, (20, 6, 6)).astype(np.float32)  # many ties
    cover = (rng.random((20, 6, 6)) > 0.7).astype(np.float32)
    ours = auroc(torch.from_numpy(maps), torch.from_numpy(cover)).numpy()
    for m, c, a in zip(maps, cover, ours):
        inside, outside = m[c >= 0.5], m[c < 0.5]
        u = mannwhitneyu(inside, outside).statistic
        assert a == pytest.approx(u / (len(inside) * len(outside)), abs=1e-6)


def test_mask_to_grid_is_area_coverage():
    mask = np.zeros((16, 16), bool)
    mask[:4, :6] = True
    grid = mask_to_grid(mask, (4, 4))
    assert grid[0].tolist() == [1.0, 0.5, 0.0, 0.0]
    assert grid.sum().item() == pytest.approx(mask.sum() / 16)


def test_small_object_pointing():
    # An object smaller than a cell: the best-covered cell counts as a hit.
    cover = torch.zeros(4, 4)
    cover[1, 2], cover[1, 1] = 0.3, 0.1
    peak = torch.zeros(4, 4)
    peak[1, 2] = 1
    elsewhere = torch.zeros(4, 4)
    elsewhere[1, 1] = 1
    assert pointing_game(torch.stack([peak, elsewhere]), cover).tolist() == [1.0, 0.0]


def test_topk_iou_flat_map_is_chance():
    cover = square_mask()  # 9 of 64 cells
    expected_hits = 9 * 9 / 64
    assert topk_iou(torch.ones(8, 8), cover).item() == pytest.approx(expected_hits / (18 - expected_hits))


def test_res_scores_by_hand():
    from flmm_probe.metrics import intersection_union, res_scores

    pred = np.zeros((4, 4), bool)
    pred[:2, :2] = True
    target = np.zeros((4, 4), bool)
    target[:2, :] = True
    assert intersection_union(pred, target) == (4, 8)
    scores = res_scores([4, 3, 0], [8, 4, 5])
    assert scores["cIoU"] == pytest.approx(7 / 17)
    assert scores["gIoU"] == pytest.approx((0.5 + 0.75 + 0) / 3)
    assert scores["P@0.5"] == pytest.approx(2 / 3) and scores["P@0.7"] == pytest.approx(1 / 3)
    assert scores["P@0.8"] == 0


def test_average_recall_matches_the_reference_sum():
    from flmm_probe.metrics import average_recall

    iou = np.array([0.0, 0.25, 0.5, 0.731, 1.0, 0.99999])
    step = 1e-3  # the reference's loop at a coarser step, to keep the brute force fast
    thresholds = np.arange(0, 1, step)[:-1]  # 0, step, ..., 1 - 2*step
    brute = sum(step * (iou >= t).mean() for t in thresholds)
    assert average_recall(iou, step) == pytest.approx(brute, abs=1e-9)
    assert average_recall(np.array([1.0])) == pytest.approx(1 - 1e-5)


def test_map_scores_broadcast_and_agree():
    from flmm_probe.metrics import MAP_METRICS, map_scores

    torch.manual_seed(0)
    maps = torch.rand(3, 2, 4, 6, 6)  # (phrase, layer, head, y, x)
    cover = (torch.rand(3, 1, 1, 6, 6) > 0.6).float()
    scores = map_scores(maps, cover)
    assert set(scores) == set(MAP_METRICS)
    assert all(v.shape == (3, 2, 4) for v in scores.values())
    assert torch.equal(scores["auroc"], auroc(maps, cover))
    assert torch.equal(scores["pointing"], pointing_game(maps, cover))
    # Negative values sort correctly too.
    assert torch.allclose(auroc(maps - 0.5, cover), scores["auroc"])


def test_small_object_has_inside_cells_for_every_metric():
    from flmm_probe.metrics import map_scores

    cover = torch.zeros(4, 4)
    cover[1, 2], cover[1, 1] = 0.3, 0.1  # no cell reaches 0.5; cell (1, 2) holds the most
    maps = torch.rand(4, 4)
    maps[1, 2] = 2.0
    scores = map_scores(maps, cover)
    assert scores["pointing"].item() == 1.0 and scores["auroc"].item() == 1.0
    assert scores["best_iou"].item() == 1.0
