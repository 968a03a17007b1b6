"""English noun phrases of a free-form answer, for grounding: spaCy's noun chunks (the optional extra ``english``).

    pip install "flmm_probe[english]" && python -m spacy download en_core_web_sm
    answer = ground_answer(backbone, grounder, image, question, phrases=noun_phrases())

spaCy, because its noun chunks come from a dependency parse ("the man in the red shirt" gives "the man" and
"the red shirt"; a noun phrase is found by its syntax, not by a word list), each with exact character offsets
into the text; it is maintained, fast on a CPU, and its pipelines install as ordinary packages. NLTK or
TextBlob would need corpus downloads and a hand-written chunk grammar of part-of-speech tags.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .phrases import Span

DEFAULT_PIPELINE = "en_core_web_sm"


def noun_phrases(pipeline: str | Callable[[str], Any] = DEFAULT_PIPELINE, pronouns: bool = False) -> Callable[[str], list[Span]]:
    """A phrase source for ``apps.ground_answer``: text -> char spans of its noun chunks, in reading order.

    ``pipeline``: the name or path of an installed spaCy pipeline with a parser, or any callable from text to a
    parsed spaCy ``Doc`` (a loaded ``Language`` is one). ``pronouns``: keep chunks whose head is a pronoun
    ("it", "they"), which name nothing in the image by their own words (off by default).
    """
    if isinstance(pipeline, str):
        try:
            import spacy
        except ImportError as error:
            raise ImportError('English noun phrases need spaCy: pip install "flmm_probe[english]"') from error
        try:
            pipeline = spacy.load(pipeline)
        except OSError as error:
            raise OSError(f"No spaCy pipeline {pipeline!r} is installed: python -m spacy download {pipeline} "
                          "(or give the name or path of another pipeline with a parser).") from error

    def extract(text: str) -> list[Span]:
        doc = pipeline(text)
        if not doc.has_annotation("DEP"):
            raise ValueError("The spaCy pipeline gave no dependency parse, which noun chunks come from: use a pipeline "
                             f"with a parser, such as {DEFAULT_PIPELINE}.")
        return [(chunk.start_char, chunk.end_char) for chunk in doc.noun_chunks if pronouns or chunk.root.pos_ != "PRON"]

    return extract


__all__ = ["DEFAULT_PIPELINE", "noun_phrases"]
