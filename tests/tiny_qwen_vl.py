"""Tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL models and their real processors, built offline."""

from __future__ import annotations

import torch
from transformers import (
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from tiny import make_tokenizer

SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>"]
# The Qwen chat layout (system turn left out): the image sits between vision_start and vision_end.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HEAD_DIM = 16  # hidden 64 / 4 heads
MROPE_SECTION = [2, 3, 3]  # (temporal, height, width) rotary pairs; sums to HEAD_DIM / 2


def tiny_qwen_vl(
    model_type: str, max_pixels: int = 160 * 160, layers: int = 2
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """(model, processor) for "qwen2_vl", "qwen2_5_vl" or "qwen3_vl", random weights.

    The image processor resizes every image to multiples of patch * merge (28 for Qwen2/2.5, 32 for Qwen3)
    with at most `max_pixels` pixels, so a sample has a few dozen image tokens.
    """
    torch.manual_seed(0)
    tokenizer = make_tokenizer(SPECIAL, bos=None)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    patch = 16 if model_type == "qwen3_vl" else 14
    text = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": MROPE_SECTION},
    )
    tokens = dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    if model_type == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=patch)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        model_class, processor_class = Qwen2VLForConditionalGeneration, Qwen2VLProcessor
        video_class = Qwen2VLVideoProcessor
    elif model_type == "qwen2_5_vl":
        vision = dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=patch,
            window_size=56, fullatt_block_indexes=[1],
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        model_class, processor_class = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
        video_class = Qwen2VLVideoProcessor
    elif model_type == "qwen3_vl":
        text["head_dim"] = HEAD_DIM
        vision = dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=patch,
            num_position_embeddings=64, deepstack_visual_indexes=[0],
        )
        config = Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
        model_class, processor_class = Qwen3VLForConditionalGeneration, Qwen3VLProcessor
        video_class = Qwen3VLVideoProcessor
    else:
        raise ValueError(f"Unknown Qwen VL model_type {model_type!r}.")
    model = model_class(config).eval()
    factor = patch * 2
    size = {"shortest_edge": factor * factor, "longest_edge": max_pixels}
    image_processor = Qwen2VLImageProcessor(size=size, patch_size=patch, merge_size=2, temporal_patch_size=2)
    video_processor = video_class(size=size, patch_size=patch, merge_size=2, temporal_patch_size=2)
    processor = processor_class(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor
