"""Tiny random LLaVA-NeXT and LLaVA-OneVision models with their real processors, built offline."""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2Config,
    SiglipVisionConfig,
    LlamaConfig,
)

from tiny import SIMPLE_TEMPLATE, make_tokenizer

TILE = 16  # tile side in pixels
PATCH = 4  # -> 4x4 tokens per tile
# (height, width) resolutions: landscape, portrait and square grids of 2, 3 and 4 tiles.
PINPOINTS = [[16, 32], [32, 16], [32, 32], [16, 48], [48, 16]]


def _text(vocab: int, pad: int, cls=LlamaConfig):
    return cls(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=vocab, pad_token_id=pad,
    )


def tiny_llava_next():
    """(model, processor): LLaVA-NeXT, CLIP tower (CLS dropped), Llama, 16 px tiles of 4x4 tokens."""
    torch.manual_seed(0)
    tokenizer = make_tokenizer(["<image>"])
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE, patch_size=PATCH
    )
    config = LlavaNextConfig(
        vision_config=vision, text_config=_text(len(tokenizer), tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=SIMPLE_TEMPLATE,
    )
    return model, processor


def tiny_llava_onevision(max_tiles: int = 9):
    """(model, processor): LLaVA-OneVision, SigLIP tower (no CLS), Qwen2, 16 px tiles of 4x4 tokens.

    `max_tiles` is `vision_aspect_ratio="anyres_max_<n>"`: above ~n tiles' worth of tokens the unpadded grid
    is resampled to fewer tokens.
    """
    torch.manual_seed(0)
    tokenizer = make_tokenizer(["<image>", "<video>"])
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE, patch_size=PATCH
    )
    aspect = f"anyres_max_{max_tiles}"
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=_text(len(tokenizer), tokenizer.pad_token_id, Qwen2Config),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=PINPOINTS, vision_feature_select_strategy="full", vision_feature_layer=-1,
        vision_aspect_ratio=aspect,
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = LlavaOnevisionImageProcessor(size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS)
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=LlavaOnevisionVideoProcessor(),
        num_image_tokens=(TILE // PATCH) ** 2, vision_feature_select_strategy="full", vision_aspect_ratio=aspect,
        chat_template=SIMPLE_TEMPLATE,
    )
    return model, processor
