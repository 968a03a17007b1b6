"""Grounded answers: generation untouched, then every phrase of the answer grounded."""

import pytest
import torch

from flmm_probe import load_backbone
from flmm_probe.apps import generate, ground_answer, shapes_phrases
from flmm_probe.data.shapes import DESCRIBE, make_scene
from flmm_probe.decoder import build_grounder
from flmm_probe.fit import FitConfig
from flmm_probe.organism import load_organism, load_organism_sam

from checks import parameter_hash
from tiny import image, tiny_llava


def test_shapes_phrases_follow_the_worlds_grammar():
    text = "a large red cross, the circle and two green squares left of an orange diamond."
    assert [text[a:b] for a, b in shapes_phrases(text)] == ["a large red cross", "the circle", "two green squares",
                                                           "an orange diamond"]
    assert shapes_phrases("yes") == [] and shapes_phrases("the crosses") == []


@pytest.fixture(scope="module")
def organism():
    torch.set_num_threads(1)
    model, processor = load_organism("small")
    return load_backbone(model, processor)


def _plain_generate(model, processor, pixels, prompt, **kwargs):
    inputs = processor(images=[pixels], text=[prompt], return_tensors="pt")
    return model.generate(**inputs, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id, **kwargs)[0].tolist()


def test_answers_are_what_plain_generate_writes_and_every_phrase_is_grounded(organism):
    scenes = [make_scene("test", i) for i in range(4)]
    weights = parameter_hash(organism.model)
    sam = load_organism_sam()
    grounder = build_grounder(FitConfig(base_channels=8, long_side=16), 4 * 4, sam, 128, 4).eval()
    for scene in scenes:
        for question in (DESCRIBE, "what colour is the cross?"):
            prompt = organism.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}], add_generation_prompt=True)
            plain = _plain_generate(organism.model, organism.processor, scene.image, prompt, max_new_tokens=40)
            answer = ground_answer(organism, grounder, scene.image, question, max_new_tokens=40)
            special = set(organism.processor.tokenizer.all_special_ids)
            n_prompt = len(organism.processor(images=[scene.image], text=[prompt])["input_ids"][0])
            assert answer.tokens == [t for t in plain[n_prompt:] if t not in special]
            assert answer.exact
            if question == DESCRIBE:
                assert answer.phrases and [p.text for p in answer.phrases] == [answer.text[a:b] for a, b in shapes_phrases(answer.text)]
                assert all(p.mask.shape == scene.image.shape[:2] and p.mask.dtype == bool for p in answer.phrases)
            else:
                assert answer.phrases == [] and answer.note == "no phrase to ground"
            # After grounding, generation is what it was: the probe left nothing attached.
            assert _plain_generate(organism.model, organism.processor, scene.image, prompt, max_new_tokens=40) == plain
    assert parameter_hash(organism.model) == weights


def test_generation_of_a_tiny_llava_is_untouched_and_phrases_can_be_given():
    model, processor = tiny_llava()
    backbone = load_backbone(model, processor)
    picture = image(40, 60, seed=1)
    text, tokens = generate(backbone, picture, "describe", max_new_tokens=6)
    prompt = backbone.__class__(model, processor, instruction="describe").prompt()
    inputs = processor(images=[[picture]], text=[prompt], return_tensors="pt")
    plain = model.generate(**inputs, do_sample=False, max_new_tokens=6, pad_token_id=processor.tokenizer.pad_token_id)
    special = set(processor.tokenizer.all_special_ids)
    assert tokens == [t for t in plain[0, inputs["input_ids"].shape[1]:].tolist() if t not in special]
    # Sampling settings go to generate as they are: the same seed draws the same tokens as plain generate.
    torch.manual_seed(3)
    sampled = generate(backbone, picture, "describe", max_new_tokens=6, do_sample=True, top_k=0, temperature=2.0)[1]
    torch.manual_seed(3)
    plain = model.generate(**inputs, do_sample=True, top_k=0, temperature=2.0, max_new_tokens=6,
                           pad_token_id=processor.tokenizer.pad_token_id)
    assert sampled == [t for t in plain[0, inputs["input_ids"].shape[1]:].tolist() if t not in special]
    assert sampled != tokens, "a hot sampler on a random model leaves the greedy path"
