"""Gemma 3: probe exactness against eager (bidirectional image block, sliding-window layer), pooled layout."""

import pytest

import flmm_probe.backbones.gemma3  # noqa: F401  (registers the adapter)
from flmm_probe import load_backbone

from checks import check_backbone_against_eager, check_planted, local_vision
from tiny import image
from tiny_gemma3 import tiny_gemma3

SAMPLES = [
    (image(40, 60, seed=1), "a red circle left of the blue square", ["red circle", "the blue square"]),
    (image(70, 30, seed=2), "two green crosses", ["two green crosses"]),
]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_gemma3_matches_eager_padded_batch(padding_side):
    model, processor = tiny_gemma3()
    processor.tokenizer.padding_side = padding_side
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES)


def test_gemma3_matches_eager_single():
    model, processor = tiny_gemma3()
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES[:1])


def test_gemma3_sliding_window_hides_distant_image_tokens():
    """With a window of 8, the phrase tokens of the sliding layer see none of the 16 image tokens: the
    recorded sliding-layer weights are 0 there and the full-attention layer's are not."""
    model, processor = tiny_gemma3(sliding_window=8)
    record = load_backbone(model, processor).record(*SAMPLES[0])
    maps = record.maps["global"]  # (phrase, layer, head, Y, X)
    assert float(maps[:, 0].abs().max()) == 0.0
    assert float(maps[:, 1].min()) > 0.0


@pytest.mark.parametrize("size,box", [((64, 96), (56, 8, 80, 24)), ((96, 64), (8, 56, 24, 80))])
def test_gemma3_planted_patch_lands_in_place(size, box):
    model, processor = tiny_gemma3()
    local_vision(model, lambda name: "vision_tower" in name)
    check_planted(load_backbone(model, processor), size, box)


def test_gemma3_record_shapes():
    model, processor = tiny_gemma3()
    record = load_backbone(model, processor).record(*SAMPLES[0])
    assert record.phrases == ["red circle", "the blue square"]
    assert record.maps["global"].shape == (2, 2, 4, 4, 4)  # 4x4 pooled soft tokens over the whole image
    assert [h.shape for h in record.hidden] == [(2, 2, 64), (3, 2, 64)]


def test_gemma3_refuses_pan_and_scan_crops():
    model, processor = tiny_gemma3()
    backbone = load_backbone(model, processor)
    # 40x120 is cut into three 40x40 crops, each with its own block of soft tokens (the processor's own
    # Pan & Scan defaults override the image processor's, so the small crop size goes with the call).
    inputs = processor(
        images=[[image(40, 120)]], text=[backbone.prompt() + "a"], do_pan_and_scan=True, pan_and_scan_min_crop_size=32,
        return_tensors="pt",
    )
    with pytest.raises(ValueError, match="Pan & Scan"):
        backbone.layout(inputs, 0, (40, 120))
