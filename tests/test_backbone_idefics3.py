"""Idefics3 and SmolVLM: probe exactness against eager, and the layout of the tagged tile runs ("tiles", one
box each) and of the global run ("global")."""

import pytest
import torch

import flmm_probe.backbones.idefics3  # noqa: F401  (registers the adapter)
from flmm_probe import load_backbone

from checks import check_backbone_against_eager, check_planted, local_vision
from tiny import image
from tiny_idefics3 import tiny_idefics3, tiny_smolvlm

# 40x60 -> 64x96 -> 2x3 tiles + global, 60x20 -> 96x32 -> 3x1 tiles + global: different tile counts.
SAMPLES = [
    (image(40, 60, seed=1), "a red circle left of the blue square", ["red circle", "the blue square"]),
    (image(60, 20, seed=2), "two green crosses", ["two green crosses"]),
]
BUILDERS = {"idefics3": tiny_idefics3, "smolvlm": tiny_smolvlm}
# One-token (8 px) squares off the diagonal of their 32 px tile: a flip, a transposition inside a tile or a
# reordering of the tiles moves them by more than the check's one-cell tolerance.
PLANTS = [((64, 96), (64, 16, 72, 24)), ((96, 64), (0, 80, 8, 88))]


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
@pytest.mark.parametrize("longest_edge", [96, 32])
@pytest.mark.parametrize("size,box", PLANTS)
def test_planted_patch_lands_in_place(family, longest_edge, size, box):
    """longest_edge=96: 2x3 (or 3x2) tiles plus the global tile; 32: not split, the global run only."""
    model, processor = BUILDERS[family](longest_edge=longest_edge)
    local_vision(model, lambda name: "vision_model" in name)
    backbone = load_backbone(model, processor)
    kinds = backbone.prepare([image(*size)], ["a red circle"], [["red circle"]]).layouts[0].kinds
    assert kinds == (["tiles", "global"] if longest_edge > 32 else ["global"])
    check_planted(backbone, size, box)


@pytest.mark.parametrize("family", BUILDERS)
def test_record_shapes(family):
    model, processor = BUILDERS[family]()
    record = load_backbone(model, processor).record(*SAMPLES[0])
    assert record.phrases == ["red circle", "the blue square"]
    # (phrase, layer, head, Y, X): the global tile 4x4 over the image; 2x3 tiles of 4x4 -> an 8x12 canvas.
    assert record.maps["global"].shape == (2, 2, 4, 4, 4)
    assert record.maps["tiles"].shape == (2, 2, 4, 8, 12)
    assert torch.isfinite(record.maps["tiles"]).all() and record.maps["tiles"].sum() > 0
