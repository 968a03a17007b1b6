"""A tiny random DeepSeek-VL model with its real processor, built offline."""

from __future__ import annotations

import torch
from transformers import (
    DeepseekVLConfig,
    DeepseekVLForConditionalGeneration,
    DeepseekVLImageProcessor,
    DeepseekVLProcessor,
    LlamaConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from tiny import SIMPLE_TEMPLATE, make_tokenizer

SIDE = 32  # the square input, in pixels
PATCH = 4  # -> 8x8 image tokens


def tiny_deepseek_vl():
    """(model, processor): DeepSeek-VL with a 2-layer SigLIP tower and a GQA Llama, 32 px square input."""
    torch.manual_seed(0)
    words = make_tokenizer(["<image>"])
    # The processor reads its image token from the tokenizer's `image_token` attribute.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words._tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIDE, patch_size=PATCH
    )
    text = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
    )
    config = DeepseekVLConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)
    model = DeepseekVLForConditionalGeneration(config).eval()
    processor = DeepseekVLProcessor(
        image_processor=DeepseekVLImageProcessor(size={"height": SIDE, "width": SIDE}), tokenizer=tokenizer,
        num_image_tokens=(SIDE // PATCH) ** 2, chat_template=SIMPLE_TEMPLATE,
    )
    return model, processor
