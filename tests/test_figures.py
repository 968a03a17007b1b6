"""Every figure renders from frames built by the real analysis functions, alone and through render_all."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread

from analyses.counterfactual import counterfactual_frame, counterfactual_table
from analyses.heads import localization_heads
from analyses.score import ScoredSample, baseline_frame, score_records
from figures.counterfactual import write_counterfactual
from figures.head_heatmap import write_head_heatmap
from figures.layer_curves import write_layer_curves
from figures.masks import iou, write_masks
from figures.overlays import head_scores, top_heads, write_overlays
from figures.render import main, render_all
from figures.training_steps import write_training_steps
from flmm_probe.record import AttentionRecord

from test_analyses_counterfactual import SAMPLES as COUNTERFACTUAL_SAMPLES
from test_analyses_counterfactual import PlantedBackbone

GRID, SCALE = 8, 8  # 8 x 8 attention grid on a 64 x 64 image
BOOT = {"n_boot": 100}


def synthetic(n=8, layers=4, heads=4, strength=5.0, seed=0):
    """Samples whose head (2, 1) peaks on each phrase's mask with `strength`; images show the object."""
    rng = np.random.default_rng(seed)
    samples, images = [], []
    side = GRID * SCALE
    for s in range(n):
        maps = torch.from_numpy(rng.random((2, layers, heads, GRID, GRID))).float()
        image = np.full((side, side, 3), 0.85) + rng.normal(0, 0.03, (side, side, 3))
        masks = []
        for p in range(2):
            y, x = rng.integers(0, GRID - 2, 2)
            mask = np.zeros((side, side), bool)
            mask[SCALE * y : SCALE * (y + 2), SCALE * x : SCALE * (x + 2)] = True
            image[mask] = (0.8, 0.3, 0.1) if p == 0 else (0.2, 0.4, 0.8)
            maps[p, 2, 1, y : y + 2, x : x + 2] += strength
            maps[p, 1, :, y : y + 2, x : x + 2] += strength * torch.rand(heads, 1, 1) / 4  # layer 1: a little, varying by head
            masks.append(mask)
        mass = torch.full((2, layers, heads), 0.05)
        mass[:, 2, 1] = 0.5
        phrases, spans = ["the red box", "the blue box"], [(0, 11), (12, 24)]
        record = AttentionRecord("t", phrases, spans, {"global": maps}, (side, side), image_mass=mass)
        samples.append(ScoredSample(f"s{s}", record, masks, [{"plural": False}, {"plural": False}]))
        images.append(np.clip(image, 0, 1))
    return samples, images


@pytest.fixture(scope="module")
def run():
    samples, images = synthetic()
    return {
        "samples": samples,
        "images": images,
        "scores": score_records(samples),
        "baselines": baseline_frame(samples),
        "heads": localization_heads([s.record for s in samples], top=2, select=2),
    }


def assert_rendered(paths, stem=None):
    """A PDF and a PNG of reasonable size each, and a PNG that is not blank."""
    assert paths and sorted(p.suffix for p in paths) == sorted([".pdf", ".png"] * (len(paths) // 2))
    for path in paths:
        assert path.exists(), path
        if stem is not None:
            assert path.stem == stem
        if path.suffix == ".pdf":
            assert path.stat().st_size > 5_000, path
        else:
            assert path.stat().st_size > 20_000, path
            pixels = imread(path)
            assert pixels.std() > 0.05, f"{path} looks blank"


def test_layer_curves_one_backbone(run, tmp_path):
    paths = write_layer_curves(run["scores"], run["baselines"], tmp_path / "layer_curves", **BOOT)
    assert_rendered(paths, "layer_curves")


def test_layer_curves_backbones_with_different_depths(run, tmp_path):
    deeper, _ = synthetic(layers=6, seed=1)
    scores = pd.concat([run["scores"].assign(backbone="tiny-4"), score_records(deeper).assign(backbone="tiny-6")])
    baselines = pd.concat([run["baselines"].assign(backbone="tiny-4"), baseline_frame(deeper).assign(backbone="tiny-6")])
    assert_rendered(write_layer_curves(scores, baselines, tmp_path / "curves.v1", heads=("mean", "best"), **BOOT), "curves.v1")


def test_layer_curves_reject_a_missing_metric(run, tmp_path):
    with pytest.raises(ValueError, match="not in the score frame"):
        write_layer_curves(run["scores"], None, tmp_path / "x", metrics=("cIoU",), **BOOT)


def test_head_heatmap_outlines_localization_heads(run, tmp_path):
    assert tuple(run["heads"].loc[run["heads"]["selected"], ["layer", "head"]].iloc[0]) == (2, 1)
    paths = write_head_heatmap(run["scores"], tmp_path / "heat", metric="auroc", localization=run["heads"], **BOOT)
    assert_rendered(paths, "heat")


def test_overlays_rank_heads_by_the_frame(run, tmp_path):
    values = head_scores(run["scores"], "s0", 0, "best_iou")
    assert values.shape == (4, 4) and values[2, 1] == values.max() == 1.0
    assert top_heads(np.array([[0.2, np.nan], [0.9, 0.5]]), 3) == [(1, 0), (1, 1), (0, 0)]
    sample = run["samples"][0]
    paths = write_overlays(
        run["images"][0], sample.masks[0], sample.record.fused()[0], values, "best_iou", tmp_path / "overlay",
        k=5, sample="s0", phrase=sample.record.phrases[0],
    )
    assert_rendered(paths, "overlay")


def test_masks_titles_carry_iou(run, tmp_path):
    truth = np.stack([s.masks[0] for s in run["samples"][:3]])
    shifted = np.roll(truth, 4, axis=2)
    assert iou(truth[0], truth[0]) == 1.0 and iou(shifted[0], truth[0]) == pytest.approx(12 / 20)
    predictions = {"training_free": shifted, "unet": np.roll(truth, 2, axis=1), "sam": truth}
    paths = write_masks(np.stack(run["images"][:3]), truth, predictions, tmp_path / "masks", names=["a", "b", "c"])
    assert_rendered(paths, "masks")


@pytest.mark.parametrize("kind", ["lines", "heatmap"])
def test_training_steps(tmp_path, kind):
    schedule = [(0, 0.0), (100, 0.5), (200, 2.0), (400, 5.0)]  # (step, strength of the planted head)
    frames = [score_records(synthetic(n=4, strength=strength, seed=2)[0]).assign(step=step) for step, strength in schedule]
    paths = write_training_steps(pd.concat(frames, ignore_index=True), tmp_path / kind, metric="pointing", kind=kind, **BOOT)
    assert_rendered(paths, kind)


@pytest.fixture(scope="module")
def counterfactual():
    frame, _ = counterfactual_frame(PlantedBackbone(COUNTERFACTUAL_SAMPLES), COUNTERFACTUAL_SAMPLES)
    return counterfactual_table(frame, n_boot=50)


def test_counterfactual(counterfactual, tmp_path):
    assert_rendered(write_counterfactual(counterfactual, tmp_path / "counterfactual"), "counterfactual")


def test_render_all_reads_a_run_folder(run, counterfactual, tmp_path):
    assert render_all(tmp_path) == [] and main([str(tmp_path)]) == 1
    run["scores"].to_parquet(tmp_path / "scores.parquet")
    run["baselines"].to_parquet(tmp_path / "baselines.parquet")
    run["heads"].to_parquet(tmp_path / "heads.parquet")
    steps = [run["scores"].assign(step=0), run["scores"].assign(step=50)]
    pd.concat(steps, ignore_index=True).to_parquet(tmp_path / "training_steps.parquet")
    sample = run["samples"][1]
    np.savez(
        tmp_path / "overlays_s1_0.npz", image=run["images"][1], mask=sample.masks[0], maps=sample.record.fused()[0].numpy(),
        values=head_scores(run["scores"], "s1", 0, "pointing"), metric="pointing", sample="s1", phrase=sample.record.phrases[0],
    )
    truth = np.stack([s.masks[1] for s in run["samples"][:2]])
    images = np.stack(run["images"][:2])
    np.savez(tmp_path / "masks.npz", images=images, truth=truth, training_free=np.roll(truth, 3, axis=1), sam=truth)
    counterfactual.to_parquet(tmp_path / "counterfactual_table.parquet")
    paths = render_all(tmp_path, metrics=("pointing", "best_iou"), n_boot=50)
    stems = {Path(p).stem for p in paths}
    assert stems == {
        "layer_curves", "head_heatmap_pointing", "head_heatmap_best_iou", "training_steps_pointing",
        "training_steps_best_iou", "overlays_s1_0", "masks", "counterfactual",
    }
    assert all(p.parent == tmp_path / "figures" for p in paths)
    assert_rendered(paths)
