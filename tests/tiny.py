"""Tiny random models and processors built offline from the real transformers classes, for the tests."""

from __future__ import annotations

import contextlib
import contextvars
import json
import string

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

WORDS = (
    "a an the of and in on to is with left right above below red green blue yellow big small circle square "
    "triangle cross diamond two three cat dog sky grass floor picture image please give me description "
    "user assistant what colour shape"
).split()
SIMPLE_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)


def make_tokenizer(special: list[str], bos: str | None = "<s>", extra_words: list[str] = ()) -> PreTrainedTokenizerFast:
    """A WordLevel fast tokenizer over a small vocabulary, with the given special tokens (inside ``pipeline(name)``:
    ``real_tokenizer(name, special, bos)``).

    Words are split on whitespace and punctuation, so offset mappings are exact. With `bos`, a
    post-processor prepends it as real tokenizers do.
    """
    if _PIPELINE.get() is not None:
        return real_tokenizer(_PIPELINE.get(), special, bos)
    base = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab_list = base + [t for t in special if t not in base] + list(dict.fromkeys(WORDS + list(extra_words)))
    vocab_list += [c for c in string.punctuation + string.digits if c not in vocab_list]
    vocab = {w: i for i, w in enumerate(vocab_list)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=[t for t in special if t not in base],
    )
    return fast


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random HxWx3 uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# LLaVA-1.5's own chat template (llava-hf/llava-1.5-7b-hf): its generation prompt ends with "ASSISTANT:", no space.
LLAVA15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


# The tokenizer pipeline make_tokenizer builds: None for word-level, else a real checkpoint's ("metaspace",
# "byte_level", "gemma": see real_tokenizer). Set it with `with pipeline("byte_level"): tiny_qwen_vl(...)`.
_PIPELINE: contextvars.ContextVar[str | None] = contextvars.ContextVar("pipeline", default=None)
CORPUS = [" ".join(WORDS), "USER: ASSISTANT: A boy's 2 dogs, the well-known cat sat; naive cafe. 12 34 56",
          "What is in the image? Please give me a description of the image. A red circle left of the blue square",
          "User: Assistant: model user assistant [INST] [/INST] system You are a helpful assistant."]


@contextlib.contextmanager
def pipeline(name: str):
    """Within the block, ``make_tokenizer`` (and so every tiny builder) builds ``real_tokenizer(name, ...)``."""
    token = _PIPELINE.set(name)
    try:
        yield
    finally:
        _PIPELINE.reset(token)


def real_tokenizer(name: str, special: list[str], bos: str | None = "<s>") -> PreTrainedTokenizerFast:
    """A tokenizer built with a real checkpoint family's pipeline, its BPE trained here on ``CORPUS``:

    - "metaspace" (Llama 2, Vicuna, Mistral): SentencePiece-style, a space is "\u2581" and one is prepended to the
      first word, pieces never cross a word start, byte fallback (<0x00>..<0xFF>) for unseen characters;
    - "byte_level" (Qwen2, Llama 3, GPT-2 / SmolLM): bytes as characters, GPT-2's pre-tokenizer regex (a word
      takes the space before it: "\u0120cat"), offsets that include that space;
    - "gemma": spaces normalised to "\u2581" with no space prepended, pieces start at a "\u2581", byte fallback.
    ``special``: added special tokens; ``bos``: prepended by the post-processor where given.
    """
    base = ["<unk>", "<s>", "</s>", "<pad>"]
    specials = base + [t for t in special if t not in base]
    if name == "byte_level":
        pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = Tokenizer(models.BPE(unk_token=None))
        trainer.pre_tokenizer = pre
        trainer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok = trainer
        tok.decoder = decoders.ByteLevel()
    else:
        if name == "metaspace":
            pre, normalizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first"), None
        elif name == "gemma":
            pre = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
            normalizer = normalizers.Replace(" ", "\u2581")
        else:
            raise ValueError(f"unknown pipeline {name!r}")
        trainer = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer.pre_tokenizer, trainer.normalizer = pre, normalizer
        trainer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
        learned = json.loads(trainer.to_str())["model"]
        vocab = dict(learned["vocab"])
        for byte in range(256):  # SentencePiece's byte pieces, after the learned ones
            vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer, tok.normalizer = pre, normalizer
        strip = [decoders.Strip(" ", 1, 0)] if name == "metaspace" else []
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    tok.add_special_tokens(specials)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", additional_special_tokens=specials[len(base):])


def llama_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with Llama's pipeline (``real_tokenizer("metaspace", ...)``) and LLaVA's <image> token."""
    return real_tokenizer("metaspace", ["<image>"])


def tiny_llava(image_size: int = 32, patch: int = 8, layers: int = 3, pad: bool = False, real_tokenizer: bool = False):
    """(model, processor): LLaVA-1.5 with a 2-layer CLIP tower and a GQA Llama, random weights. ``real_tokenizer``:
    Llama's tokenizer pipeline (``llama_tokenizer``) and LLaVA-1.5's chat template instead of word-level ones."""
    torch.manual_seed(0)
    tokenizer = llama_tokenizer() if real_tokenizer else make_tokenizer(["<image>"])
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=patch
    )
    text = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config).eval()
    if pad:
        from transformers import LlavaImageProcessor

        image_processor = LlavaImageProcessor(size={"shortest_edge": image_size}, crop_size=image_size, do_pad=True)
    else:
        image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=image_size)
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA15_TEMPLATE if real_tokenizer else SIMPLE_TEMPLATE,
    )
    return model, processor
