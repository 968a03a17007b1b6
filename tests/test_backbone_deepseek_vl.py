"""DeepSeek-VL: probe exactness against eager, and the layout of its single padded-square view."""

import pytest
import torch

import flmm_probe.backbones.deepseek_vl  # noqa: F401  (registers the adapter)
from flmm_probe import load_backbone

from checks import check_backbone_against_eager, check_planted, local_vision
from tiny import image
from tiny_deepseek_vl import tiny_deepseek_vl

SAMPLES = [
    (image(40, 60, seed=1), "a red circle left of the blue square", ["red circle", "the blue square"]),
    (image(60, 20, seed=2), "two green crosses", ["two green crosses"]),
]
# Off-diagonal and off-centre: a flip or a transposition of the grid, or a wrong padding offset, moves them.
PLANTS = [((64, 96), (64, 16, 72, 24)), ((96, 64), (0, 80, 8, 88))]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_deepseek_vl_matches_eager_padded_batch(padding_side):
    model, processor = tiny_deepseek_vl()
    processor.tokenizer.padding_side = padding_side
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES)


def test_deepseek_vl_matches_eager_single():
    model, processor = tiny_deepseek_vl()
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES[:1])


@pytest.mark.parametrize("size,box", PLANTS)
def test_deepseek_vl_planted_patch_lands_in_place(size, box):
    model, processor = tiny_deepseek_vl()
    local_vision(model, lambda name: "vision_model" in name)
    check_planted(load_backbone(model, processor), size, box)


def test_deepseek_vl_record_shapes():
    model, processor = tiny_deepseek_vl()
    record = load_backbone(model, processor).record(*SAMPLES[0])
    assert record.phrases == ["red circle", "the blue square"]
    # (phrase, layer, head, Y, X): 40x60 resized to 21x32 and padded to 32x32; 8x8 cells of 7.5 x 7.6 px.
    assert record.maps["global"].shape == (2, 2, 4, 5, 8)
    assert torch.isfinite(record.maps["global"]).all() and record.maps["global"].sum() > 0


def test_deepseek_vl_box_is_the_padded_square():
    """40x60: longest side 60 -> 32 (x 8/15), 40 -> round(21.33) = 21 rows, padded by (32-21)//2 = 5 on top,
    so the square spans y in [-5, 27] / (21/40) = [-9.52, 51.43] original pixels and x in [0, 60]."""
    model, processor = tiny_deepseek_vl()
    prep = load_backbone(model, processor).prepare([SAMPLES[0][0]], [SAMPLES[0][1]], [SAMPLES[0][2]])
    (view,) = prep.layouts[0].views
    assert view.grid == (8, 8)
    assert view.box == pytest.approx((0.0, -5 * 40 / 21, 60.0, 27 * 40 / 21))
