"""The probe on its own: exactness on a text-only Llama, restoration, frozen weights, misuse errors."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from flmm_probe import probe as probe_module
from flmm_probe.probe import AttentionProbe, ProbeError

from checks import check_probe_against_eager, implementations, parameter_hash
from tiny import tiny_llava


def tiny_llama(heads=4, kv_heads=2, layers=2):
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, vocab_size=50,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_text_model_matches_eager_with_padding(kv_heads):
    model = tiny_llama(kv_heads=kv_heads)
    ids = torch.randint(0, 50, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :5] = 0  # left padding on the second row
    queries = torch.tensor([[12, 15, 19], [10, 11, 19]])
    keys = torch.stack([torch.arange(2, 10), torch.arange(6, 14)])
    check_probe_against_eager(model, {"input_ids": ids, "attention_mask": mask}, queries, keys)


def test_text_model_matches_eager_without_mask():
    # Without padding SDPA gets no mask and relies on is_causal: the probe must apply causality itself.
    model = tiny_llama()
    ids = torch.randint(0, 50, (1, 16))
    check_probe_against_eager(model, {"input_ids": ids}, torch.tensor([[3, 9, 15]]), torch.arange(16)[None])


@pytest.mark.parametrize("queue, queue_bytes", [(1, 2**30), (3, 2**30), (8, 2**30), (8, 1)])
def test_layers_computed_in_groups_match_eager(monkeypatch, queue, queue_bytes):
    # The probe computes queued layers together (up to probe.QUEUE layers, QUEUE_CPU on a CPU, and QUEUE_BYTES): 10
    # layers in groups of 1, 3 (3+3+3+1), 8 (8+2) and, by bytes, 1 land in their own slots, with and without a
    # padding mask.
    monkeypatch.setattr(probe_module, "QUEUE", queue)
    monkeypatch.setattr(probe_module, "QUEUE_CPU", queue)
    monkeypatch.setattr(probe_module, "QUEUE_BYTES", queue_bytes)
    model = tiny_llama(layers=10)
    ids = torch.randint(0, 50, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :3] = 0
    queries, keys = torch.tensor([[5, 15], [9, 15]]), torch.arange(4, 12).expand(2, -1)
    for inputs in ({"input_ids": ids}, {"input_ids": ids, "attention_mask": mask}):
        check_probe_against_eager(model, inputs, queries, keys)


def test_eager_model_is_wrapped_not_switched():
    model = tiny_llama()
    model.set_attn_implementation("eager")
    ids = torch.randint(0, 50, (1, 12))
    check_probe_against_eager(model, {"input_ids": ids}, torch.tensor([[5, 11]]), torch.arange(12)[None])
    assert model.config._attn_implementation == "eager"


def test_vision_tower_is_not_recorded_and_everything_is_restored():
    model, _ = tiny_llava()
    before = implementations(model)
    params = parameter_hash(model)
    ids = torch.full((1, 24), 5)
    ids[0, 2:18] = model.config.image_token_id
    with AttentionProbe(model, torch.tensor([[20, 23]]), torch.arange(2, 18)[None]) as probe:
        assert model.config.text_config._attn_implementation == "flmm_probe"
        assert model.config.vision_config._attn_implementation == "sdpa"
        model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32), use_cache=False)
    assert probe.weights.shape == (1, 3, 4, 2, 16)
    assert implementations(model) == before
    assert parameter_hash(model) == params


def test_decoding_step_is_refused():
    model = tiny_llama()
    ids = torch.randint(0, 50, (1, 8))
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        with AttentionProbe(model, torch.tensor([[0]]), torch.tensor([[1]])):
            with pytest.raises(ProbeError, match="use_cache=False"):
                model(input_ids=ids[:, :1], cache=cache, use_cache=True)
    assert model.config._attn_implementation == "sdpa"


def test_bad_positions_and_unsupported_implementation():
    model = tiny_llama()
    with pytest.raises(ValueError, match="batch"):
        AttentionProbe(model, torch.zeros(2, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    model.config._attn_implementation_internal = "flex_attention"
    with pytest.raises(ProbeError, match="sdpa"):
        with AttentionProbe(model, torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)):
            pass


def test_a_nested_probe_on_the_same_model_is_refused_and_the_outer_one_still_works():
    model = tiny_llama()
    ids = torch.randint(0, 50, (1, 8))
    positions = torch.tensor([[5]]), torch.tensor([[1, 2]])
    with AttentionProbe(model, *positions) as outer:
        with pytest.raises(ProbeError, match="already has an active AttentionProbe"):
            with AttentionProbe(model, *positions):
                pass
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    assert outer.recorded.all() and model.config._attn_implementation == "sdpa"
