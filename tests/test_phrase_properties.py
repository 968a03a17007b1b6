"""Property tests: phrase lookup and phrase tokens against slow references that say the rules plainly."""

import string

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flmm_probe.phrases import PhraseError, resolve_spans, span_tokens

WORDS = ["red", "colored", "a", "cat", "cats", "scat", "dog", "dog's", "2", "x-ray", "ray", "naïve"]


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def slow_occurrences(text: str, phrase: str) -> list[int]:
    """Every start where ``phrase`` stands in ``text`` as whole words, by checking each index."""
    starts = []
    for i in range(len(text) - len(phrase) + 1):
        if text[i : i + len(phrase)] != phrase:
            continue
        before = i > 0 and _is_word(text[i - 1]) and _is_word(phrase[0])
        after = i + len(phrase) < len(text) and _is_word(text[i + len(phrase)]) and _is_word(phrase[-1])
        if not before and not after:
            starts.append(i)
    return starts


def slow_resolve(text: str, phrases: list[str]) -> list[tuple[int, int]] | None:
    """Reading order: each phrase at its first whole-word occurrence after the previous one, else its first."""
    spans, cursor = [], 0
    for phrase in phrases:
        words = phrase.strip()
        found = slow_occurrences(text, words)
        if not found:
            return None
        start = next((s for s in found if s >= cursor), found[0])
        spans.append((start, start + len(words)))
        cursor = start + len(words)
    ordered = sorted(spans)
    if any(b[0] < a[1] for a, b in zip(ordered, ordered[1:])):
        return None
    return spans


texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(texts, st.lists(st.tuples(st.integers(0, 7), st.integers(1, 3), st.sampled_from(["", " "])), min_size=1, max_size=3),
       st.lists(st.sampled_from(WORDS), max_size=2))
def test_string_phrases_resolve_as_the_slow_reference_says(text, picks, strays):
    words = text.split()
    phrases = [" ".join(words[i % len(words) : i % len(words) + n]) + pad for i, n, pad in picks] + strays
    expected = slow_resolve(text, phrases)
    try:
        got = resolve_spans(text, phrases)
    except PhraseError:
        assert expected is None
        return
    assert got == expected
    for (start, end), phrase in zip(got, phrases):
        assert text[start:end] == phrase.strip()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=12), st.integers(0, 5), st.data())
def test_span_tokens_are_exactly_the_tokens_a_span_touches(lengths, prompt_chars, data):
    # Tokens laid end to end over a text of letters (a slow reference: every character's token, by walking).
    text = "".join(string.ascii_lowercase[i % 26] * n for i, n in enumerate(lengths))
    offsets, owner, pos = [[0, 0]], {}, prompt_chars
    for t, n in enumerate(lengths, start=1):
        offsets.append([pos, pos + n])
        for c in range(pos, pos + n):
            owner[c - prompt_chars] = t
        pos += n
    start = data.draw(st.integers(0, len(text) - 1))
    end = data.draw(st.integers(start + 1, len(text)))
    (tokens,) = span_tokens(torch.tensor(offsets), prompt_chars, [(start, end)], text)
    assert tokens.tolist() == sorted({owner[c] for c in range(start, end)})
