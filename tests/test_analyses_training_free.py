"""Training-free masks from chosen heads, with and without SAM prompts."""

import numpy as np
import torch
from segment_anything import SamPredictor

from analyses.score import ScoredSample
from analyses.training_free import evaluate_training_free, grid_oracle
from flmm_probe.metrics import head_heatmap
from flmm_probe.record import AttentionRecord

from test_refiner import tiny_sam


def sample_with_grounding_head(seed=0, size=64, grid=8):
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), bool)
    y, x = rng.integers(0, grid - 3, 2)
    mask[y * 8 : y * 8 + 24, x * 8 : x * 8 + 24] = True
    maps = torch.from_numpy(rng.random((1, 2, 3, grid, grid))).float() * 0.1
    maps[0, 1, 2, y : y + 3, x : x + 3] += 1.0  # head (1, 2) covers the object
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    record = AttentionRecord("the box", ["the box"], [(0, 7)], {"global": maps}, (size, size))
    return ScoredSample(f"s{seed}", record, [mask]), image


def test_heatmap_is_normalised_and_sized():
    sample, _ = sample_with_grounding_head()
    heat = head_heatmap(sample.record.maps["global"], [(1, 2), (0, 0)], (64, 64))
    assert heat.shape == (1, 64, 64) and heat.min() == 0 and heat.max() == 1


def test_grounding_head_beats_a_noise_head_and_sam_runs():
    samples = [sample_with_grounding_head(seed) for seed in range(4)]
    _, good = evaluate_training_free(samples, [(1, 2)])
    _, noise = evaluate_training_free(samples, [(0, 0)])
    good, noise = good.set_index("method"), noise.set_index("method")
    assert good.loc["attention", "cIoU"] > 0.6 > noise.loc["attention", "cIoU"]
    assert good.loc["attention", "cIoU"] > 2 * max(good.loc["uniform", "cIoU"], good.loc["centre", "cIoU"])
    per_phrase, summary = evaluate_training_free(samples[:1], [(1, 2)], predictor=SamPredictor(tiny_sam()))
    assert list(summary["method"]) == ["attention", "sam_box", "sam_point", "sam_box_point", "uniform", "centre", "grid_oracle"]
    assert per_phrase["iou"].between(0, 1).all()


def test_grid_oracle_is_the_masks_cover_of_each_cell():
    mask = np.zeros((64, 64), bool)
    mask[8:24, 12:16] = True  # rows fill two 8-pixel cells; columns half of cell 1
    oracle = grid_oracle([mask], (8, 8))
    assert oracle.shape == (1, 1, 1, 8, 8)
    expected = torch.zeros(8, 8)
    expected[1:3, 1] = 0.5
    assert torch.equal(oracle[0, 0, 0], expected)


def test_grid_oracle_is_near_perfect_on_cell_aligned_objects():
    # objects that fill whole 8-pixel cells are what the grid can say exactly
    samples = [sample_with_grounding_head(seed) for seed in range(4)]
    _, summary = evaluate_training_free(samples, [(0, 0)])
    assert summary.set_index("method").loc["grid_oracle", "cIoU"] > 0.9
