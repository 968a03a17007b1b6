"""Grounded answers: the frozen LMM answers as it would alone, then F-LMM grounds what it said.

    answer = ground_answer(backbone, grounder, image, "Please give me a description of the image.")
    answer.text                      # exactly what model.generate writes, greedy by default
    [(p.text, p.mask.sum()) for p in answer.phrases]

Two passes, and the first is plain ``model.generate`` with nothing attached: the answer's tokens are the
ones the model gives without grounding, bit for bit. The second is one prefill of prompt + answer with the
probe (``Backbone.record``), whose maps and hidden states the fitted decoder and refiner turn into a mask
per phrase. Which phrases: ``shapes_phrases`` (the shapes world's grammar, for the organism), a list the
caller gives (strings or char spans of the answer), or any callable from the answer to spans.

An answer whose tokens, retokenized, differ from those the model generated is grounded all the same, but
``GroundedAnswer.exact`` says so: the recorded tokens are then not quite the ones the model wrote.

A visual chain of thought (``chain_of_thought``) grounds the object a question is about, crops the image
around it and asks the question again on the crop: the model sees the object at a scale its vision grid can
resolve. The model is the same frozen one; only its input image changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .backbones import Backbone
from .data.shapes import COLOURS, NUMBERS, PLURALS, SHAPES, SIZES
from .evaluate import ground, segment
from .decoder import Grounder
from .images import ImageLike, to_rgb
from .phrases import PhraseLike, Span, resolve_spans
from .record import AttentionRecord

PhraseSource = Callable[[str], Sequence[PhraseLike]] | Sequence[PhraseLike]

_WORDS = "|".join
_SHAPES_PHRASE = re.compile(
    rf"\b(?:(?:a|an|the) (?:(?:{_WORDS(SIZES)}) )?(?:(?:{_WORDS(COLOURS)}) )?(?:{_WORDS(SHAPES)})"
    rf"|(?:{_WORDS(NUMBERS[2:])}) (?:(?:{_WORDS(COLOURS)}) )?(?:{_WORDS(PLURALS.values())}))\b"
)


def shapes_phrases(text: str) -> list[Span]:
    """Char spans of the shapes world's object phrases in ``text``: "a large red cross", "the cross", "two red
    circles" (an article or a number, then size and colour words where said, then the shape)."""
    return [m.span() for m in _SHAPES_PHRASE.finditer(text)]


@dataclass
class GroundedPhrase:
    """One phrase of an answer: ``text == answer[start:end]``; ``mask``: (H, W) bool at the image's size;
    ``score``: the mean sigmoid probability inside the mask (0 for an empty mask)."""

    text: str
    start: int
    end: int
    mask: np.ndarray
    score: float


@dataclass
class GroundedAnswer:
    """What the model answered and where its phrases are. ``tokens``: the generated ids (end of sequence and
    padding left out); ``exact``: the answer retokenized after the prompt gives exactly ``tokens``; ``record``:
    the probe's record of the answer's phrases (None when nothing was grounded)."""

    question: str
    text: str
    tokens: list[int]
    phrases: list[GroundedPhrase] = field(default_factory=list)
    exact: bool = True
    note: str = ""
    record: AttentionRecord | None = field(default=None, repr=False)


def with_instruction(backbone: Backbone, instruction: str) -> Backbone:
    """The same frozen model and processor, asked ``instruction`` (its answer is then read after it)."""
    return type(backbone)(backbone.model, backbone.processor, instruction=instruction)


@torch.no_grad()
def generate(backbone: Backbone, image: ImageLike, question: str, max_new_tokens: int = 64,
             **generate_kwargs: Any) -> tuple[str, list[int]]:
    """``model.generate`` on the chat prompt for ``question`` with the image, greedy unless ``generate_kwargs``
    say otherwise (they go to ``generate`` as they are). Returns (answer text, generated ids without special tokens)."""
    asked = with_instruction(backbone, question)
    inputs = backbone.processor(images=[[to_rgb(image)]], text=[asked.prompt()], return_tensors="pt")
    inputs = {k: v.to(backbone.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(backbone.model.dtype)
    kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens} | generate_kwargs
    tokenizer = backbone.processor.tokenizer
    kwargs.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    ids = backbone.model.generate(**inputs, **kwargs)[0, inputs["input_ids"].shape[1]:].tolist()
    special = set(tokenizer.all_special_ids)
    tokens = [t for t in ids if t not in special]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip(), tokens


def _answer_tokens(backbone: Backbone, text: str) -> list[int]:
    """The ids the answer ``text`` gets when it is tokenized after the prompt, as ``Backbone.record`` reads it."""
    tokenizer = backbone.processor.tokenizer
    prompt = backbone.answer_prompt()
    whole = tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
    alone = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return whole[len(alone):] if whole[: len(alone)] == alone else whole


def ground_answer(backbone: Backbone, grounder: Grounder, image: ImageLike, question: str,
                  phrases: PhraseSource = shapes_phrases, max_new_tokens: int = 64, **generate_kwargs: Any) -> GroundedAnswer:
    """Generate the answer to ``question`` about ``image``, then segment its phrases (see the module docstring).

    ``phrases``: a callable from the answer text to its phrases, or the phrases themselves (strings or char
    spans of the answer). An empty answer, or one with no phrase to ground, comes back with no phrases and a
    ``note`` saying why; a phrase the tokenizer loses raises ``PhraseError``.
    """
    pil = to_rgb(image)
    text, tokens = generate(backbone, pil, question, max_new_tokens, **generate_kwargs)
    asked = with_instruction(backbone, question)
    answer = GroundedAnswer(question, text, tokens, exact=_answer_tokens(asked, text) == tokens)
    if not text:
        answer.note = "empty answer"
        return answer
    found = phrases(text) if callable(phrases) else phrases
    if not found:
        answer.note = "no phrase to ground"
        return answer
    answer.record, coarse, refined = ground(asked, grounder, pil, text, found)
    logits = refined if refined is not None else coarse
    probabilities = torch.sigmoid(logits).numpy()
    for (start, end), mask, p in zip(resolve_spans(text, found), (logits > 0).numpy(), probabilities):
        answer.phrases.append(GroundedPhrase(text[start:end], start, end, mask, float(p[mask].mean()) if mask.any() else 0.0))
    return answer


def crop_box(mask: np.ndarray, logits: np.ndarray, context: float = 3.0, min_side: int = 0) -> tuple[int, int, int, int]:
    """The square (x0, y0, x1, y1) to crop around a grounded object. mask, logits: (H, W).

    The object is the connected part of ``mask`` that holds its most probable pixel (a mask may come in pieces;
    an object is one), or that pixel alone when the mask is empty. The square is centred on the part's bounding
    box, ``context`` times its longer side but at least ``min_side`` pixels wide, and shifted to lie inside
    the image (clipped where the image is narrower).
    """
    height, width = mask.shape
    if mask.any():
        parts, _ = ndimage.label(mask)
        peak = np.unravel_index(int(np.argmax(np.where(mask, logits, -np.inf))), mask.shape)
        ys, xs = np.nonzero(parts == parts[peak])
    else:
        ys, xs = (np.array([i]) for i in np.unravel_index(int(np.argmax(logits)), logits.shape))
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    side = min(max(context * (max(np.ptp(ys), np.ptp(xs)) + 1), min_side), height, width)
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return x0, y0, min(width, x0 + int(round(side))), min(height, y0 + int(round(side)))


@dataclass
class ChainAnswer:
    """A visual chain of thought: ``phrase`` (the object the question is about) grounded to ``mask`` (H, W) bool,
    the image cropped to ``box`` (x0, y0, x1, y1), and the question answered on the crop: ``text``, ``tokens``
    (as ``generate`` gives them). ``note``: "empty mask" when the crop was centred on the most probable pixel."""

    question: str
    phrase: str
    mask: np.ndarray
    box: tuple[int, int, int, int]
    text: str
    tokens: list[int]
    note: str = ""


def chain_of_thought(backbone: Backbone, grounder: Grounder, image: ImageLike, question: str, phrase: str,
                     context: float = 3.0, min_side: int = 0, max_new_tokens: int = 16, **generate_kwargs: Any) -> ChainAnswer:
    """Ground ``phrase`` (the object ``question`` asks about, e.g. "the red object"), crop ``image`` around it
    (``crop_box``), and answer ``question`` on the crop, resized by the processor as any image is.

    The phrase is grounded as F-LMM grounds a referring expression: recorded as the answer to the backbone's own
    instruction. The answer on the crop is plain ``generate`` (greedy unless ``generate_kwargs`` say otherwise).
    """
    pil = to_rgb(image)
    masks, coarse, refined = segment(backbone, grounder, pil, phrase, [(0, len(phrase))])
    logits = (refined if refined is not None else coarse)[0].numpy()
    box = crop_box(masks[0], logits, context, min_side)
    text, tokens = generate(backbone, pil.crop(box), question, max_new_tokens, **generate_kwargs)
    return ChainAnswer(question, phrase, masks[0], box, text, tokens, "" if masks[0].any() else "empty mask")


__all__ = ["ChainAnswer", "GroundedAnswer", "GroundedPhrase", "chain_of_thought", "crop_box", "generate", "ground_answer",
           "shapes_phrases", "with_instruction"]
