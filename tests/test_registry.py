"""The backbone registry."""

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

import flmm_probe
from flmm_probe.backbones import UnsupportedModelError, load_backbone

EXPECTED = {
    "llava", "llava_next", "llava_onevision", "deepseek_vl", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl",
    "gemma3", "idefics3", "smolvlm", "paligemma",
}


def test_every_family_is_registered():
    assert set(flmm_probe.list_backbones()) == EXPECTED


def test_unknown_model_type_lists_supported_and_says_how_to_add():
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=10))
    with pytest.raises(UnsupportedModelError, match="llava_next.*register_backbone"):
        load_backbone(model, processor=object())
