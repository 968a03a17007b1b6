"""A tiny random Gemma 3 model and its real processor, built offline."""

from __future__ import annotations

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    PreTrainedTokenizerFast,
)

from tiny import make_tokenizer

BOI, EOI, SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
SPECIAL = [BOI, EOI, SOFT, "<start_of_turn>", "<end_of_turn>"]
# Gemma's turn layout; the processor expands <start_of_image> into "\n\n" BOI + soft tokens + EOI "\n\n".
CHAT_TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def tiny_gemma3(
    image_size: int = 64, patch: int = 8, tokens_per_side: int = 4, sliding_window: int = 8
) -> tuple[Gemma3ForConditionalGeneration, Gemma3Processor]:
    """(model, processor): Gemma 3 with a 2-layer SigLIP tower and a 2-layer GQA text model, random weights.

    The SigLIP grid (image_size / patch)^2 is average-pooled to tokens_per_side^2 soft tokens. The text
    model alternates a sliding-window layer (window `sliding_window`, short enough that the image
    tokens lie outside it for the phrase tokens of the tests) with a full-attention layer.
    """
    torch.manual_seed(0)
    words = make_tokenizer(SPECIAL, extra_words=["model"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words.backend_tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": SOFT},
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
        patch_size=patch, vision_use_head=False,
    )
    text = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, query_pre_attn_scalar=16, vocab_size=len(tokenizer), sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    config = Gemma3Config(
        vision_config=vision, text_config=text, mm_tokens_per_image=tokens_per_side**2,
        boi_token_index=tokenizer.convert_tokens_to_ids(BOI), eoi_token_index=tokenizer.convert_tokens_to_ids(EOI),
        image_token_index=tokenizer.convert_tokens_to_ids(SOFT),
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    # Gemma 3 initialises its image projection to zeros: every soft token would embed to 0.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.05)
    image_processor = Gemma3ImageProcessor(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
        image_seq_length=tokens_per_side**2,
    )
    return model, processor
