"""InternVL: probe exactness against eager, and the layout of its crops ("tiles", one box each) and of its
thumbnail ("global")."""

import pytest
import torch

import flmm_probe.backbones.internvl  # noqa: F401  (registers the adapter)
from flmm_probe import load_backbone

from checks import check_backbone_against_eager, check_planted, local_vision
from tiny import image
from tiny_internvl import tiny_internvl

# 40x60 -> 2x3 crops + thumbnail, 60x20 -> 3x1 crops + thumbnail: different tile counts in one batch.
SAMPLES = [
    (image(40, 60, seed=1), "a red circle left of the blue square", ["red circle", "the blue square"]),
    (image(60, 20, seed=2), "two green crosses", ["two green crosses"]),
]
# One-token (8 px) squares off the diagonal of their 32 px crop: a flip, a transposition inside a crop or a
# reordering of the crops moves them by more than the check's one-cell tolerance.
PLANTS = [((64, 96), (64, 16, 72, 24)), ((96, 64), (0, 80, 8, 88))]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_internvl_matches_eager_padded_batch(padding_side):
    model, processor = tiny_internvl()
    processor.tokenizer.padding_side = padding_side
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES)


def test_internvl_matches_eager_single():
    model, processor = tiny_internvl()
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES[:1])


@pytest.mark.parametrize("max_patches", [6, 1])
@pytest.mark.parametrize("size,box", PLANTS)
def test_internvl_planted_patch_lands_in_place(max_patches, size, box):
    """2x3 (or 3x2) crops stretched from the image, plus the thumbnail; max_patches=1: the single view only."""
    model, processor = tiny_internvl(max_patches=max_patches)
    local_vision(model, lambda name: "vision_tower" in name)
    backbone = load_backbone(model, processor)
    check_planted(backbone, size, box)


def test_internvl_record_shapes():
    model, processor = tiny_internvl()
    record = load_backbone(model, processor).record(*SAMPLES[0])
    assert record.phrases == ["red circle", "the blue square"]
    # (phrase, layer, head, Y, X): thumbnail 4x4 over the image; 2x3 crops of 4x4 -> an 8x12 canvas.
    assert record.maps["global"].shape == (2, 2, 4, 4, 4)
    assert record.maps["tiles"].shape == (2, 2, 4, 8, 12)
    assert torch.isfinite(record.maps["tiles"]).all() and record.maps["tiles"].sum() > 0
