"""Tiny random PaliGemma (Gemma text model) and PaliGemma-2 (Gemma2 text model) and their real processor."""

from __future__ import annotations

import torch
from transformers import (
    Gemma2Config,
    GemmaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessor,
    SiglipVisionConfig,
)

from tiny import make_tokenizer


def tiny_paligemma(
    version: int = 1, image_size: int = 32, patch: int = 8, sliding_window: int = 8
) -> tuple[PaliGemmaForConditionalGeneration, PaliGemmaProcessor]:
    """(model, processor) with a 2-layer SigLIP tower and a 2-layer GQA text model, random weights.

    version 1: Gemma text model (SDPA). version 2: Gemma2 text model with attention-logit softcapping and a
    sliding-window layer, which transformers runs with eager attention (it refuses SDPA for softcapping).
    The image is resized to image_size x image_size and gives (image_size / patch)^2 image tokens.
    """
    torch.manual_seed(0)
    tokenizer = make_tokenizer(["<image>"])
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch) ** 2
    # The processor adds PaliGemma's <loc>/<seg> tokens to the tokenizer, so the vocabulary is sized after it.
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=len(tokenizer), max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    if version == 1:
        text_config = GemmaConfig(**text)
    elif version == 2:
        text_config = Gemma2Config(
            **text, query_pre_attn_scalar=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            sliding_window=sliding_window, layer_types=["sliding_attention", "full_attention"],
        )
    else:
        raise ValueError(f"PaliGemma version must be 1 or 2, got {version}.")
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
        patch_size=patch, vision_use_head=False,
    )
    config = PaliGemmaConfig(
        vision_config=vision, text_config=text_config, projection_dim=64,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = PaliGemmaForConditionalGeneration(config).eval()
    return model, processor
