"""Tiny random Idefics3 and SmolVLM models with their real processors, built offline."""

from __future__ import annotations

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
    SmolVLMVisionConfig,
)

from tiny import make_tokenizer

TILE = 32  # tile side in pixels
PATCH = 4  # 8x8 patches, pixel-shuffled by 2 -> 4x4 tokens per tile
SCALE = 2
# The processors look these strings up as single tokens: they must be special tokens of the tokenizer.
SPECIAL = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", "<video>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _build(family: str, longest_edge: int):
    torch.manual_seed(0)
    tokenizer = make_tokenizer(SPECIAL)
    vision_cls, config_cls, model_cls = {
        "idefics3": (Idefics3VisionConfig, Idefics3Config, Idefics3ForConditionalGeneration),
        "smolvlm": (SmolVLMVisionConfig, SmolVLMConfig, SmolVLMForConditionalGeneration),
    }[family]
    vision = vision_cls(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE, patch_size=PATCH
    )
    text = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
    )
    config = config_cls(
        vision_config=vision, text_config=text, scale_factor=SCALE, image_token_id=tokenizer.convert_tokens_to_ids("<image>")
    )
    model = model_cls(config).eval()
    image_kwargs = {"size": {"longest_edge": longest_edge}, "max_image_size": {"longest_edge": TILE}, "do_image_splitting": True}
    seq_len = (TILE // PATCH // SCALE) ** 2
    if family == "idefics3":
        processor = Idefics3Processor(
            image_processor=Idefics3ImageProcessor(**image_kwargs), tokenizer=tokenizer, image_seq_len=seq_len,
            chat_template=TEMPLATE,
        )
    else:
        processor = SmolVLMProcessor(
            image_processor=SmolVLMImageProcessor(**image_kwargs), tokenizer=tokenizer,
            video_processor=SmolVLMVideoProcessor(), image_seq_len=seq_len, chat_template=TEMPLATE,
        )
    return model, processor


def tiny_idefics3(longest_edge: int = 3 * TILE):
    """(model, processor): Idefics3, 2-layer SigLIP-style tower, Llama; images to `longest_edge`, 32 px tiles."""
    return _build("idefics3", longest_edge)


def tiny_smolvlm(longest_edge: int = 3 * TILE):
    """(model, processor): SmolVLM, 2-layer SigLIP-style tower, Llama; images to `longest_edge`, 32 px tiles."""
    return _build("smolvlm", longest_edge)
