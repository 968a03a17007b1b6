"""Grounded answers leave generation untouched on every supported family (tiny random models, real classes).

For each family: the answer ``apps.generate`` returns is, token for token, what ``model.generate`` writes on the
processor's own chat prompt with nothing attached; recording with the probe between two generations changes
neither the generated tokens nor the next-token logits nor any parameter.
"""

import pytest
import torch

import flmm_probe.backbones  # noqa: F401  (registers the adapters)
from flmm_probe import load_backbone
from flmm_probe.apps import generate

from checks import parameter_hash
from tiny import image, tiny_llava
from tiny_deepseek_vl import tiny_deepseek_vl
from tiny_gemma3 import tiny_gemma3
from tiny_idefics3 import tiny_idefics3, tiny_smolvlm
from tiny_internvl import tiny_internvl
from tiny_llava_next import tiny_llava_next, tiny_llava_onevision
from tiny_paligemma import tiny_paligemma
from tiny_qwen_vl import tiny_qwen_vl

BUILDERS = {
    "llava": tiny_llava, "llava_next": tiny_llava_next, "llava_onevision": tiny_llava_onevision,
    "deepseek_vl": tiny_deepseek_vl, "qwen2_vl": lambda: tiny_qwen_vl("qwen2_vl"),
    "qwen2_5_vl": lambda: tiny_qwen_vl("qwen2_5_vl"), "qwen3_vl": lambda: tiny_qwen_vl("qwen3_vl"),
    "internvl": tiny_internvl, "gemma3": tiny_gemma3, "idefics3": tiny_idefics3, "smolvlm": tiny_smolvlm,
    "paligemma": tiny_paligemma,
}
QUESTION = "a red circle"  # every tiny tokenizer knows these words


def test_every_registered_family_is_covered():
    assert set(BUILDERS) == set(flmm_probe.list_backbones())


def _plain(model, processor, picture, prompt, new_tokens):
    """``model.generate`` on the processor's inputs for ``prompt``, greedy; returns (new ids, first-step logits)."""
    inputs = processor(images=[[picture]], text=[prompt], return_tensors="pt")
    pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else processor.tokenizer.eos_token_id
    out = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, pad_token_id=pad, output_logits=True,
                         return_dict_in_generate=True)
    return out.sequences[0, inputs["input_ids"].shape[1]:].tolist(), out.logits[0]


@pytest.mark.parametrize("family", BUILDERS)
def test_generation_is_untouched_by_the_probe(family):
    torch.manual_seed(0)
    model, processor = BUILDERS[family]()
    backbone = load_backbone(model, processor, instruction=QUESTION)
    picture = image(48, 64, seed=3)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    # PaliGemma has no chat template: its prompt is the image token, the prefix and a newline (its model card).
    prompt = (processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) if processor.chat_template
              else f"{processor.image_token}{QUESTION}\n")
    weights = parameter_hash(model)
    ids, logits = _plain(model, processor, picture, prompt, 6)
    text, tokens = generate(backbone, picture, QUESTION, max_new_tokens=6)
    special = set(processor.tokenizer.all_special_ids)
    assert tokens == [t for t in ids if t not in special]
    backbone.record(picture, "a red circle", ["red circle"])
    again, logits_again = _plain(model, processor, picture, prompt, 6)
    assert again == ids and torch.equal(logits_again, logits)
    assert parameter_hash(model) == weights
