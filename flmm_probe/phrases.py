"""Phrases: from strings or char spans of a text to the token indices that carry them.

The text is fed as the assistant's answer after the chat template's instruction, so its characters sit
at the end of the processed prompt; the fast tokenizer's offset mapping says which tokens cover which
characters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

Span = tuple[int, int]
PhraseLike = str | Span
# How a phrase's tokens' maps become one map (``pool``).
POOLINGS = ("mean", "max", "last")


class PhraseError(ValueError):
    """A phrase cannot be located in the text or in its tokens; the message names it."""


def _word_match(text: str, phrase: str, start: int) -> int:
    """Index of the first occurrence of ``phrase`` in ``text`` at or after ``start`` that begins and ends on word
    boundaries (where the phrase's own first or last character is a word character), or -1."""
    pattern = (r"(?<!\w)" if re.match(r"\w", phrase) else "") + re.escape(phrase) + (r"(?!\w)" if re.search(r"\w$", phrase) else "")
    found = re.compile(pattern).search(text, start)
    return found.start() if found else -1


def _span(phrase: object, text: str) -> Span:
    """A (start, end) span given as a pair of integers, checked and trimmed of surrounding whitespace."""
    if isinstance(phrase, (bytes, dict)) or not isinstance(phrase, Sequence) or len(phrase) != 2 \
            or not all(isinstance(x, int) or (torch.is_tensor(x) and x.numel() == 1) for x in phrase):
        raise PhraseError(f"Phrase {phrase!r} is neither a string nor a (start, end) pair of char offsets.")
    start, end = (int(x) for x in phrase)
    if not 0 <= start < end <= len(text):
        raise PhraseError(f"Span {tuple(phrase)} is empty or outside the text (length {len(text)}).")
    words = text[start:end]
    if not words.strip():
        raise PhraseError(f"Span {tuple(phrase)} covers only whitespace: {words!r}.")
    return start + len(words) - len(words.lstrip()), end - len(words) + len(words.rstrip())


def resolve_spans(text: str, phrases: Sequence[PhraseLike]) -> list[Span]:
    """Char spans (start, end) of `phrases` in `text`.

    A phrase is a string or a (start, end) span. A string matches whole words only ("red" is not the "red" in
    "colored") and is looked up from the end of the previous phrase's match (so repeated words resolve in
    reading order), and from the start of the text if it does not occur after it. Whitespace around a phrase
    is not part of it (a span that includes some is trimmed): a trailing space would otherwise take in the
    next word's first token, whose offsets begin with the space. Raises PhraseError for a bare string in
    place of the list, a phrase that is neither a string nor a pair of offsets, an empty phrase, a string not
    in the text or only inside longer words, a span out of range, or two phrases that overlap.
    """
    if isinstance(phrases, str):
        raise PhraseError(f"phrases is the string {phrases!r}: pass a list of phrases, e.g. [{phrases!r}].")
    if not phrases:
        raise PhraseError("No phrases given: pass at least one phrase string or (start, end) char span.")
    spans: list[Span] = []
    cursor = 0
    for phrase in phrases:
        if isinstance(phrase, str):
            words = phrase.strip()
            if not words:
                raise PhraseError(f"Empty phrase {phrase!r}: every phrase needs at least one visible character.")
            start = _word_match(text, words, cursor)
            if start < 0:
                start = _word_match(text, words, 0)
            if start < 0:
                inside = "only inside a longer word of" if words in text else "not in"
                raise PhraseError(f"Phrase {phrase!r} is {inside} the text {text!r}; phrases match whole words.")
            span = (start, start + len(words))
        else:
            span = _span(phrase, text)
        spans.append(span)
        cursor = span[1]
    ordered = sorted(range(len(spans)), key=lambda i: spans[i])
    for a, b in zip(ordered, ordered[1:]):
        if spans[b][0] < spans[a][1]:
            raise PhraseError(
                f"Phrases {text[slice(*spans[a])]!r} {spans[a]} and {text[slice(*spans[b])]!r} {spans[b]} overlap; "
                "give non-overlapping phrases."
            )
    return spans


def span_tokens(offsets: torch.Tensor, text_start: int, spans: Sequence[Span], text: str) -> list[torch.Tensor]:
    """Token indices covering each char span.

    offsets: (T, 2) char offsets of each token in the processed prompt ((0, 0) for special/pad tokens).
    text_start: index in the processed prompt of the text's first character.
    Returns one (n_tokens,) LongTensor per span: every token whose characters intersect the span.
    Raises PhraseError if a span covers no token (the tokenizer dropped it).
    """
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts
    indices = []
    for start, end in spans:
        hit = real & (starts < text_start + end) & (ends > text_start + start)
        tokens = torch.nonzero(hit).flatten()
        if tokens.numel() == 0:
            raise PhraseError(f"Phrase {text[start:end]!r} maps to no token: the tokenizer dropped its characters.")
        indices.append(tokens)
    return indices


def pool(maps: torch.Tensor, token_groups: Sequence[torch.Tensor], mode: str = "mean") -> torch.Tensor:
    """Merge the token rows of each phrase.

    maps: (..., query, key); token_groups: per phrase, indices into the query dim, in text order.
    Returns (phrase, ..., key), merged by "mean" (the paper's default), "max" (its alternative) or "last":
    the phrase's last token alone, the only one a causal LM has let read the whole phrase ("the largest
    circle": "the" and "largest" cannot know which circle is meant; docs/results.md, "Which token grounds").
    """
    if mode not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {mode!r}.")
    merged = []
    for group in token_groups:
        rows = maps.index_select(-2, group.to(maps.device))
        merged.append(rows.mean(-2) if mode == "mean" else rows.amax(-2) if mode == "max" else rows[..., -1, :])
    return torch.stack(merged)
