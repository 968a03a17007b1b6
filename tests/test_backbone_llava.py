"""LLaVA-1.5: probe exactness against eager, and the layout of its single view (crop and pad)."""

import pytest
import torch

from flmm_probe import load_backbone

from checks import check_backbone_against_eager, check_planted, local_vision
from tiny import image, tiny_llava

SAMPLES = [
    (image(40, 60, seed=1), "a red circle left of the blue square", ["red circle", "the blue square"]),
    (image(48, 32, seed=2), "two green crosses", ["two green crosses"]),
]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_llava_matches_eager_padded_batch(padding_side):
    model, processor = tiny_llava()
    processor.tokenizer.padding_side = padding_side
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES)


def test_llava_matches_eager_single():
    model, processor = tiny_llava()
    check_backbone_against_eager(load_backbone(model, processor), SAMPLES[:1])


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("size,box", [((64, 96), (40, 8, 56, 24)), ((96, 64), (8, 56, 24, 72))])
def test_llava_planted_patch_lands_in_place(pad, size, box):
    model, processor = tiny_llava(image_size=32, patch=8, pad=pad)
    local_vision(model, lambda name: "vision_tower" in name)
    check_planted(load_backbone(model, processor), size, box)


def test_llava_record_shapes():
    model, processor = tiny_llava()
    record = load_backbone(model, processor).record(*SAMPLES[0])
    assert record.phrases == ["red circle", "the blue square"]
    assert record.maps["global"].shape == (2, 3, 4, 4, 6)  # 40x60 centre-cropped to 40x40 -> 4x4 of a 4x6 canvas
    assert torch.all(record.maps["global"][..., [0, -1]] == 0)  # columns outside the crop
    assert [h.shape for h in record.hidden] == [(2, 3, 64), (3, 3, 64)]


def test_llava_record_mass_and_key_norms_match_eager():
    model, processor = tiny_llava()
    backbone = load_backbone(model, processor)
    record = backbone.record(*SAMPLES[1])
    prep = backbone.prepare([SAMPLES[1][0]], [SAMPLES[1][1]], [SAMPLES[1][2]])
    keys = prep.layouts[0].key_positions
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**backbone.model_inputs(prep.inputs), use_cache=False, output_attentions=True)
    model.set_attn_implementation("sdpa")
    rows = prep.tokens[0][0]
    attention = torch.stack(out.attentions, 1)[0]  # (layer, head, T, T)
    expected_mass = attention[:, :, rows][..., keys].sum(-1).mean(-1)  # mean over the phrase's tokens
    assert torch.allclose(record.image_mass[0], expected_mass, atol=1e-6)
    assert record.key_norms["global"].shape == (3, 2, 6, 4)  # (layer, kv_head, y, x) for a 48x32 image
    assert bool((record.key_norms["global"][:, :, 1:5] > 0).all())  # rows 0 and 5 lie outside the centre crop


def test_llava_refuses_texts_it_cannot_read_as_they_are():
    model, processor = tiny_llava()
    backbone = load_backbone(model, processor)
    img = SAMPLES[0][0]
    with pytest.raises(ValueError, match="image placeholder '<image>'"):
        backbone.record(img, "a red circle <image> left of it", ["red circle"])
    limit = model.config.text_config.max_position_embeddings
    with pytest.raises(ValueError, match=f"more than the model's {limit} positions"):
        backbone.record(img, " ".join(["red"] * limit), ["red"])
    with pytest.raises(ValueError, match="non-empty string"):
        backbone.record(img, None, ["red"])


def test_a_loaded_backbone_is_frozen():
    model, processor = tiny_llava()
    assert any(p.requires_grad for p in model.parameters())
    backbone = load_backbone(model, processor)
    assert not any(p.requires_grad for p in backbone.model.parameters()) and not backbone.model.training


REAL_TEXT = "A boy's 2 dogs and the well-known cat  sat naïve"
REAL_PHRASES = ["A boy's", "2 dogs", "well-known cat", "cat", "naïve", " sat "]


def test_real_tokenizer_pipeline_lands_phrases_on_the_tokens_the_model_writes():
    model, processor = tiny_llava(real_tokenizer=True)
    backbone = load_backbone(model, processor)
    assert backbone.prompt().endswith("ASSISTANT:") and backbone.answer_prompt().endswith("ASSISTANT: ")
    tokenizer = processor.tokenizer
    prep = backbone.prepare([image(40, 60, seed=1)], [REAL_TEXT], [REAL_PHRASES[:3] + REAL_PHRASES[4:]])
    ids = prep.inputs["input_ids"][0].tolist()
    # The answer's tokens are those the model writes after the generation prompt: the text tokenized alone.
    alone = tokenizer(REAL_TEXT, add_special_tokens=False)["input_ids"]
    assert ids[-len(alone):] == alone and tokenizer.convert_ids_to_tokens(alone[:1]) == ["\u2581A"]
    pieces = [tokenizer.convert_ids_to_tokens([ids[t] for t in tokens]) for tokens in prep.tokens[0]]
    assert pieces[0] == ["\u2581A", "\u2581boy's"]
    assert pieces[1] == ["\u25812", "\u2581dog", "s"]
    assert "".join(pieces[2]).replace("\u2581", " ").strip() == "well-known cat"
    assert pieces[3] == ["n", "a", "<0xC3>", "<0xAF>", "ve"], "both byte pieces of an unseen 'ï' are the phrase's"
    assert "".join(pieces[4]).replace("\u2581", "") == "sat", "surrounding spaces are not the phrase's"
    check_backbone_against_eager(backbone, [(image(40, 60, seed=1), REAL_TEXT, REAL_PHRASES[:3])])
