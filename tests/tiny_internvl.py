"""A tiny random InternVL model with its real processor, built offline."""

from __future__ import annotations

import torch
from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    InternVLVisionConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from tiny import make_tokenizer

TILE = 32  # tile side in pixels
PATCH = 4  # 8x8 patches, pixel-shuffled by 0.5 -> 4x4 tokens per tile
TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<IMG_CONTEXT>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def tiny_internvl(max_patches: int = 6):
    """(model, processor): InternVL with a 2-layer InternViT, Qwen2, 32 px tiles, up to `max_patches` crops."""
    torch.manual_seed(0)
    words = make_tokenizer(list(TOKENS.values()))
    # The processor reads its image tokens from named special-token attributes of the tokenizer.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words._tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens=TOKENS,
    )
    vision = InternVLVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE, patch_size=PATCH
    )
    text = Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
    )
    per_tile = (TILE // PATCH // 2) ** 2
    config = InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.context_image_token_id,
        image_seq_length=per_tile, downsample_ratio=0.5,
    )
    model = InternVLForConditionalGeneration(config).eval()
    image_processor = GotOcr2ImageProcessor(
        size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=max_patches
    )
    processor = InternVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=InternVLVideoProcessor(),
        image_seq_length=per_tile, chat_template=TEMPLATE,
    )
    return model, processor
