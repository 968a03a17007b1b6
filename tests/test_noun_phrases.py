"""English noun phrases from spaCy's noun chunks, on parses given by hand (no pipeline download needed)."""

import pytest

spacy = pytest.importorskip("spacy")
from spacy.tokens import Doc  # noqa: E402

from flmm_probe.noun_phrases import noun_phrases  # noqa: E402

VOCAB = spacy.blank("en").vocab
# Universal Dependencies-style parses, as an English parser gives them.
PARSES = {
    "A man in a red shirt holds it.": (
        ["A", "man", "in", "a", "red", "shirt", "holds", "it", "."],
        [True, True, True, True, True, True, True, False, False],
        ["DET", "NOUN", "ADP", "DET", "ADJ", "NOUN", "VERB", "PRON", "PUNCT"],
        [1, 6, 1, 5, 5, 2, 6, 6, 6],
        ["det", "nsubj", "prep", "det", "amod", "pobj", "ROOT", "dobj", "punct"],
    ),
    "Two dogs chase the cat's toy.": (
        ["Two", "dogs", "chase", "the", "cat", "'s", "toy", "."],
        [True, True, True, True, False, True, False, False],
        ["NUM", "NOUN", "VERB", "DET", "NOUN", "PART", "NOUN", "PUNCT"],
        [1, 2, 2, 4, 6, 4, 2, 2],
        ["nummod", "nsubj", "ROOT", "det", "poss", "case", "dobj", "punct"],
    ),
}


def parse(text: str) -> Doc:
    words, spaces, pos, heads, deps = PARSES[text]
    return Doc(VOCAB, words=words, spaces=spaces, pos=pos, heads=heads, deps=deps)


def test_noun_chunks_become_char_spans_and_pronouns_are_left_out():
    text = "A man in a red shirt holds it."
    spans = noun_phrases(parse)(text)
    assert [text[a:b] for a, b in spans] == ["A man", "a red shirt"]
    assert [text[a:b] for a, b in noun_phrases(parse, pronouns=True)(text)] == ["A man", "a red shirt", "it"]
    text = "Two dogs chase the cat's toy."
    assert [text[a:b] for a, b in noun_phrases(parse)(text)] == ["Two dogs", "the cat's toy"]  # a possessive stays inside


def test_a_pipeline_without_a_parser_or_not_installed_is_named():
    with pytest.raises(ValueError, match="dependency parse"):
        noun_phrases(spacy.blank("en"))("a red shirt")
    with pytest.raises(OSError, match="python -m spacy download no_such_pipeline"):
        noun_phrases("no_such_pipeline")


def test_chat_names_a_missing_pipeline_before_loading_anything(tmp_path):
    from flmm_probe.cli import main

    with pytest.raises(OSError, match="python -m spacy download no_such_pipeline"):
        main(["chat", "--run", str(tmp_path / "no_run"), "--image", "no.png", "--question", "q", "--noun-phrases", "no_such_pipeline"])
    with pytest.raises(SystemExit, match="not both"):
        main(["chat", "--run", "r", "--image", "i", "--question", "q", "--phrase", "a", "--noun-phrases"])
