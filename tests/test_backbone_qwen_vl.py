"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL: probe exactness against eager, and the merged-patch layout."""

import pytest

import flmm_probe.backbones.qwen_vl  # noqa: F401  (registers the adapter)
from flmm_probe import load_backbone

from checks import check_backbone_against_eager, check_planted, local_vision
from tiny import image
from tiny_qwen_vl import tiny_qwen_vl

MODEL_TYPES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
SAMPLES = [
    (image(60, 90, seed=1), "a red circle left of the blue square", ["red circle", "the blue square"]),
    (image(100, 50, seed=2), "two green crosses", ["two green crosses"]),
]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_qwen_vl_matches_eager_padded_batch(model_type, padding_side):
    model, processor = tiny_qwen_vl(model_type)
    processor.tokenizer.padding_side = padding_side
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_qwen_vl_matches_eager_single(model_type):
    model, processor = tiny_qwen_vl(model_type)
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES[:1])


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("size,box", [((112, 168), (112, 28, 140, 56)), ((168, 112), (28, 112, 56, 140))])
def test_qwen_vl_planted_patch_lands_in_place(model_type, size, box):
    model, processor = tiny_qwen_vl(model_type)
    local_vision(model, lambda name: "visual" in name)
    check_planted(load_backbone(model, processor), size, box)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_qwen_vl_record_shapes(model_type):
    model, processor = tiny_qwen_vl(model_type)
    backbone = load_backbone(model, processor)
    record = backbone.record(*SAMPLES[0])
    assert record.phrases == ["red circle", "the blue square"]
    # 60x90 -> smart_resize to 2x3 merged tokens (56x84 for patch 14, 64x96 for patch 16), the whole image.
    assert record.maps["global"].shape == (2, 2, 4, 2, 3)
    assert [h.shape for h in record.hidden] == [(2, 2, 64), (3, 2, 64)]

