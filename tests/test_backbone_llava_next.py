"""LLaVA-NeXT and LLaVA-OneVision: probe exactness against eager, and the layout of the base view and of the
stitched, unpadded tiles (newline column removed)."""

import pytest
import torch

import flmm_probe.backbones.llava_next  # noqa: F401  (registers the adapter)
from flmm_probe import load_backbone

from checks import check_backbone_against_eager, check_planted, local_vision
from tiny import image
from tiny_llava_next import tiny_llava_next, tiny_llava_onevision

# 40x60 -> the 32x32 pinpoint (4 tiles), 60x20 -> 48x16 (3 tiles): different tile counts in one batch.
SAMPLES = [
    (image(40, 60, seed=1), "a red circle left of the blue square", ["red circle", "the blue square"]),
    (image(60, 20, seed=2), "two green crosses", ["two green crosses"]),
]
BUILDERS = {"llava_next": tiny_llava_next, "llava_onevision": tiny_llava_onevision}
# Landscape and portrait; the boxes sit off-centre so that a flip, a transposition or a swapped tile moves them.
PLANTS = [((64, 96), (64, 8, 80, 24)), ((96, 64), (8, 64, 24, 80))]


@pytest.mark.parametrize("family", BUILDERS)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_matches_eager_padded_batch(family, padding_side):
    model, processor = BUILDERS[family]()
    processor.tokenizer.padding_side = padding_side
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES)


@pytest.mark.parametrize("family", BUILDERS)
def test_matches_eager_single(family):
    model, processor = BUILDERS[family]()
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES[:1])


@pytest.mark.parametrize("family", BUILDERS)
@pytest.mark.parametrize("size,box", PLANTS)
def test_planted_patch_lands_in_place(family, size, box):
    model, processor = BUILDERS[family]()
    local_vision(model, lambda name: "vision_tower" in name)
    check_planted(load_backbone(model, processor), size, box)


@pytest.mark.parametrize("size,box", PLANTS)
def test_onevision_resampled_grid_lands_in_place(size, box):
    """anyres_max_2: the unpadded 6x8 grid (32x32 pinpoint) holds 1.5x two tiles' tokens, so the model resamples
    it (bilinear) by 1/sqrt(1.5) to 4x6 tokens over the same region."""
    model, processor = tiny_llava_onevision(max_tiles=2)
    local_vision(model, lambda name: "vision_tower" in name)
    backbone = load_backbone(model, processor)
    prep = backbone.prepare([image(*size)], ["a red circle"], [["red circle"]])
    grids = {v.kind: v.grid for v in prep.layouts[0].views}
    assert grids["tiles"] == ((4, 6) if size[1] > size[0] else (6, 4))
    check_planted(backbone, size, box)


@pytest.mark.parametrize("family", BUILDERS)
def test_record_shapes(family):
    model, processor = BUILDERS[family]()
    record = load_backbone(model, processor).record(*SAMPLES[0])
    assert record.phrases == ["red circle", "the blue square"]
    # (phrase, layer, head, Y, X): the base view is 4x4 over 40x60; the unpadded tiles 6x8 over 43.6x60 px,
    # so the canvas has 40/(43.6/6) = 5.5 -> 6 rows.
    assert record.maps["global"].shape == (2, 2, 4, 4, 4)
    assert record.maps["tiles"].shape == (2, 2, 4, 6, 8)
    assert torch.isfinite(record.maps["tiles"]).all() and record.maps["tiles"].sum() > 0
