"""PaliGemma (Gemma, SDPA) and PaliGemma 2 (Gemma2, softcapping, eager): probe exactness and layout."""

import pytest
import torch

import flmm_probe.backbones.paligemma  # noqa: F401  (registers the adapter)
from flmm_probe import load_backbone

from checks import check_backbone_against_eager, check_planted, local_vision
from tiny import image
from tiny_paligemma import tiny_paligemma

SAMPLES = [
    (image(40, 60, seed=1), "a red circle left of the blue square", ["red circle", "the blue square"]),
    (image(70, 30, seed=2), "two green crosses", ["two green crosses"]),
]


def test_paligemma2_runs_eager():
    """Gemma2's attention-logit softcapping makes transformers refuse SDPA: the probe must wrap eager."""
    assert tiny_paligemma(version=1)[0].config.get_text_config()._attn_implementation == "sdpa"
    assert tiny_paligemma(version=2)[0].config.get_text_config()._attn_implementation == "eager"


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_paligemma_matches_eager_padded_batch(version, padding_side):
    model, processor = tiny_paligemma(version)
    processor.tokenizer.padding_side = padding_side
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES)


@pytest.mark.parametrize("version", [1, 2])
def test_paligemma_matches_eager_single(version):
    model, processor = tiny_paligemma(version)
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES[:1])


def test_paligemma_text_is_the_causal_answer():
    """token_type_ids are 1 exactly on the text tokens (after "<bos>instruction\\n"), so the text is causal."""
    model, processor = tiny_paligemma()
    backbone = load_backbone(model, processor)
    prep = backbone.prepare(*zip(*SAMPLES))
    types = backbone.model_inputs(prep.inputs)["token_type_ids"]
    for i, tokens in enumerate(prep.tokens):
        answer = torch.nonzero(types[i]).flatten()
        assert answer.tolist() == list(range(int(answer[0]), int(answer[-1]) + 1))
        assert set(torch.cat(tokens).tolist()) <= set(answer.tolist())
    assert [int(t.sum()) for t in types] == [8, 3]  # words of the two texts


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size,box", [((64, 96), (56, 8, 80, 24)), ((96, 64), (8, 56, 24, 80))])
def test_paligemma_planted_patch_lands_in_place(version, size, box):
    model, processor = tiny_paligemma(version)
    local_vision(model, lambda name: "vision_tower" in name)
    check_planted(load_backbone(model, processor), size, box)


@pytest.mark.parametrize("version", [1, 2])
def test_paligemma_record_shapes(version):
    model, processor = tiny_paligemma(version)
    record = load_backbone(model, processor).record(*SAMPLES[0])
    assert record.phrases == ["red circle", "the blue square"]
    assert record.maps["global"].shape == (2, 2, 4, 4, 4)  # 32/8 = 4x4 tokens over the whole image
    assert [h.shape for h in record.hidden] == [(2, 2, 64), (3, 2, 64)]
