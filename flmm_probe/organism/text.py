"""Training texts for the organism LMM: which turns a scene yields, and their token ids and labels.

A sample is one conversation about one scene: a description turn (caption, narrative or referring
expression after the F-LMM instruction ``DESCRIBE``, the inventory after ``LIST_OBJECTS``, or, as options,
the objects named shape, colour or size first in a random order after ``NAME_OBJECTS``, or the caption's
phrases each followed by its object's place after ``LOCATE_OBJECTS``) followed by questions, or questions
alone; a ``TextRecipe`` says which of these an organism is trained on.
Token ids are built turn by turn with the word-level tokenizer, which gives exactly the ids that
``processor(text=apply_chat_template(...))`` gives (tests check this); the loss covers answers + "</s>".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from flmm_probe.data.shapes import (COLOURS, DESCRIBE, LIST_OBJECTS, NAME_OBJECTS, NUMBERS, PLURALS, QA, SHAPES, SIZES, Expression,
                                    Obj, Scene, article_phrase, count_question, reasoning_questions)

IGNORE = -100
# Answered by ``located_caption`` (the organism's training only; F-LMM records captions after DESCRIBE).
LOCATE_OBJECTS = "Please list the objects on the image."
RELATIONS = ("left", "right", "above", "below")
ATTRIBUTE_WORDS = frozenset(COLOURS) | frozenset(SHAPES) | frozenset(SIZES)
# The expression kinds whose words alone can leave their referent's colour or size open (``referring_questions``).
REFERRABLE_KINDS = ("relational", "superlative")
# A conversation opens with a description (with probability DESCRIBE_FIRST) and goes on with questions:
# every sample then supervises both skills, and questions, whose answers are one word, get a real share
# of the loss (when a third of the samples were questions alone they held ~12% of the answer tokens and
# the organism learned to name colours present in the scene, not the asked object's).
DESCRIBE_FIRST = 0.7
# Captions lead (the greedy answer to DESCRIBE is a caption). The inventory names each object's shape
# before its colour and size: without it no text asks to find an object by its shape word except the
# colour questions, and the first organisms never learned that lookup (colour questions at the prior).
DESCRIPTIONS = {"caption": 0.5, "narrative": 0.15, "expression": 0.15, "inventory": 0.2}
QUESTIONS_AFTER_DESCRIPTION = 2
QUESTIONS_ALONE = 4


def _said(expression: Expression) -> list[str]:
    """The words of ``expression`` that describe its referent: a relational one's words after the relation are the anchor's."""
    words = expression.text.split()
    return words[: next((k for k, w in enumerate(words) if w in RELATIONS), len(words))]


def place(obj: Obj) -> str:
    """Where ``obj`` is in its image, in two words: the half it is in left to right, then top to bottom
    ("left above", "right below"), by its centre."""
    height, width = obj.mask.shape
    return f"{'left' if obj.cx < width / 2 else 'right'} {'above' if obj.cy < height / 2 else 'below'}"


def located_caption(scene: Scene, rng: np.random.Generator) -> str:
    """The caption's phrases in a random order, each followed by its object's ``place``: "a large red circle left
    above and a small red cross right below."

    The answer to ``LOCATE_OBJECTS``. In a caption, the words after a phrase (",", "and") do not depend on its
    object, and the phrase's own next words (size -> colour -> shape) can be predicted from several heads each
    finding the objects of one attribute (the red ones, the large ones) and their votes agreeing on one shape.
    Here the word after the phrase's last one is its object's place, which only that object decides. (A model
    may still carry what it needs from earlier tokens: training on these texts does not by itself make the last
    token's attention find the object; docs/organism.md reports the shipped recipes.)
    """
    parts = [f"{article_phrase(scene.objects[i])} {place(scene.objects[i])}" for i in rng.permutation(len(scene.objects))]
    return (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."


def grounded_expression(scene: Scene, expression: Expression, ranked: bool = False, located: bool = False) -> str:
    """The expression, then the referent's colour and size words that it does not already say.

    "the cross" -> "the cross red large"; "the red cross left of the blue square" -> "... square large".
    F-LMM reads an expression's own tokens, and a causal LM's token looks at the image for what the next
    token needs: with the bare expression (then "</s>") nothing after its last word depends on the
    referent. The first appended word is one the text cannot give, so the expression's last
    token must find the referent to predict it. ("the large red cross" says both and stays bare.)
    ``ranked``: where colour and size cannot make that lookup (an expression that says both, or a relational
    one, whose look-alikes share its colour and often its size), the referent's rank left to right comes
    first, as a number word: "the large red cross two", "the red cross left of the blue square two large".
    The rank tells any two objects apart, and the vision tower can give it (``vision.RANK``); it is also a
    position cue, so no shipped organism is trained with it.
    ``located``: the referent's ``place`` comes first: "the largest cross left above red large". It tells the
    referent from look-alikes in other halves of the image (colour and size words do not, where the look-alikes
    share them), right after the expression's last token; and it is a property of the object in the image, not
    of the text's order.
    """
    words, said = expression.text.split(), _said(expression)
    referent = scene.objects[expression.target]
    unsaid = [w for w in (referent.colour, referent.size) if w not in said]
    if ranked and (expression.kind == "relational" or not unsaid):
        unsaid = [NUMBERS[expression.target + 1]] + unsaid  # objects are listed left to right
    if located:
        unsaid = place(referent).split() + unsaid
    return " ".join(words + unsaid)


def referring_questions(scene: Scene, kinds: tuple[str, ...]) -> list[QA]:
    """Questions that only an expression's whole meaning answers: "what size is the red cross left of the blue
    square?", about each of the scene's expressions of ``kinds``.

    One per (expression, attribute its words leave open: ``open_attributes``). A grounded expression's appended
    words are such a target only when its look-alikes differ, and relational expressions are 7% of the
    expression turns; a conversation's question can ask it far more often (``TextRecipe.referring_questions``),
    as "what colour is the cross?" taught the lookup by shape word. ``QA.kind`` is the expression's kind.
    """
    return [QA(f"what {attribute} is {e.text}?", getattr(scene.objects[e.target], attribute), e.kind)
            for e in scene.expressions if e.kind in kinds for attribute in open_attributes(scene, e)]


def open_attributes(scene: Scene, expression: Expression) -> list[str]:
    """The referent's attributes ("colour", "size") that the expression does not say and its words alone leave
    open: an object its attribute words also fit (a look-alike) differs in it. "the red cross left of the blue
    square" -> ["size"] if the other red cross has the other size; "the largest cross" never leaves "size" open."""
    said, referent = _said(expression), scene.objects[expression.target]
    lookalikes = [o for o in scene.objects if o is not referent
                  and all(w in (o.colour, o.shape, o.size) for w in said if w in ATTRIBUTE_WORDS)]
    unsaid = [a for a in ("colour", "size") if getattr(referent, a) not in said
              and not (a == "size" and {"largest", "smallest"} & set(said))]
    return [a for a in unsaid if any(getattr(o, a) != getattr(referent, a) for o in lookalikes)]


# The attribute pairs a conjunction count names, and how its question says them.
CONJUNCTIONS = {("size", "colour"): "how many {size} {colour} objects are there?",
                ("colour", "shape"): "how many {colour} {shapes} are there?",
                ("size", "shape"): "how many {size} {shapes} are there?"}


def conjunction_count(objects: list[Obj], obj: Obj, pair: tuple[str, str]) -> QA:
    """"how many large red objects are there?": the objects with ``obj``'s two attributes of ``pair`` (a ``CONJUNCTIONS``
    key), in words. A head that finds the objects of one attribute does not give it, nor do the votes of two (the
    red ones and the large ones) add up to it: the count is of the objects that have both."""
    count = sum(all(getattr(o, a) == getattr(obj, a) for a in pair) for o in objects)
    question = CONJUNCTIONS[pair].format(size=obj.size, colour=obj.colour, shapes=PLURALS[obj.shape])
    return QA(question, NUMBERS[count], "count")


def shuffled_inventory(scene: Scene, rng: np.random.Generator) -> str:
    """``scene.inventory`` with its objects in a random order: "the cross is red and large, the circle is ...".

    Listed left to right, the k-th object can be found by its place in that order; in a random order it
    must be found by the shape word just said, the lookup that questions need.
    """
    items = scene.inventory.removesuffix(".").split(", ")
    return ", ".join(items[i] for i in rng.permutation(len(items))) + "."


# The word order of a listing's items by the attribute that leads: the words after the lead must be found
# by the lead word, in any order of the objects. Led by the size, an item's shape must be found by its size
# and colour together, the lookup "the large red cross" needs when another red cross is small.
LISTING_ORDERS = {"shape": ("shape", "colour", "size"), "colour": ("colour", "shape", "size"),
                  "size": ("size", "colour", "shape")}


def object_listing(scene: Scene, rng: np.random.Generator, leads: tuple[str, ...] = ("shape",)) -> str:
    """The objects in a random order, each by its lead word, then its other words: "cross red large, circle blue small."

    The answer to ``NAME_OBJECTS``. In the caption a shape word comes after its colour and size words;
    here each object's colour and size must be found by the shape word just said, the lookup that "what
    colour is the cross?" needs.
    ``leads``: ``LISTING_ORDERS`` keys; with more than one, each listing draws its own ("red cross large, blue
    circle small." when colour leads: "what shape is the red object?" needs that lookup).
    """
    objects = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    order = LISTING_ORDERS[leads[int(rng.integers(len(leads)))] if len(leads) > 1 else leads[0]]
    return ", ".join(" ".join(getattr(o, attribute) for attribute in order) for o in objects) + "."


@dataclass(frozen=True)
class TextRecipe:
    """What an organism's training conversations say (``conversation``); the defaults are the plainest texts.

    ``grounded_expressions``: an expression turn answers ``grounded_expression(...)``, not the bare text;
    ``ranked_expressions``: with the referent's rank where colour and size cannot find it (its ``ranked``).
    ``relational_expressions``: the probability that an expression turn about a scene with relational
    expressions says one of them (0: the expression is drawn among all of the scene's, and no draw is made).
    ``shuffle_inventory``: an inventory turn answers ``shuffled_inventory(...)``.
    ``object_listings``: the probability that a caption turn becomes ``(NAME_OBJECTS, object_listing(...))``
    (0: never, and no random draw is made for it); ``listing_leads``: which attribute may lead its items.
    ``located_captions``: the probability that a caption turn that is not a listing becomes
    ``(LOCATE_OBJECTS, located_caption(...))`` (0: never, and no draw is made); ``located_expressions``: grounded
    expressions say their referent's ``place`` right after their words (``grounded_expression``'s ``located``).
    ``descriptions``: the probability of each description kind, keys and order as ``DESCRIPTIONS``.
    ``referring_questions``: the probability that a conversation's first question becomes one of the scene's
    ``referring_questions(scene, referring_kinds)``, where it has any (0: never, and no draw is made).
    ``count_questions``: the probability that the last question becomes "how many crosses are there?" about a
    shape the scene has (drawn object by object, so larger counts come more often); a scene's own count
    question asks about any shape, and more than half of them answer "zero" (0: never, and no draw is made).
    ``conjunction_counts``: the probability that such a question counts two of the drawn object's attributes
    together instead (``conjunction_count``: "how many large red objects are there?"; 0: no draw is made).
    ``reasoning``: the probability that a conversation ends with one of the scene's ``shapes.reasoning_questions``
    ("which object is the largest?" -> "the large red cross"), where it has any (0: never, and no draw is made):
    answers that name an object, which grounded applications segment.
    ``decoy_scenes``: the probability that a training scene is drawn as a target among decoys
    (``make_scene(..., decoys=True)``; 0: never, and no draw is made).
    """

    grounded_expressions: bool = False
    ranked_expressions: bool = False
    relational_expressions: float = 0.0
    shuffle_inventory: bool = False
    object_listings: float = 0.0
    listing_leads: tuple[str, ...] = ("shape",)
    located_captions: float = 0.0
    located_expressions: bool = False
    descriptions: dict[str, float] = field(default_factory=lambda: dict(DESCRIPTIONS))
    count_questions: float = 0.0
    conjunction_counts: float = 0.0
    referring_questions: float = 0.0
    referring_kinds: tuple[str, ...] = ("relational",)
    reasoning: float = 0.0
    decoy_scenes: float = 0.0

    def __post_init__(self) -> None:
        for option in ("ranked_expressions", "located_expressions"):
            if getattr(self, option) and not self.grounded_expressions:
                raise ValueError(f"{option} changes the words grounded expressions append: "
                                 "it needs grounded_expressions=True.")
        for name in ("relational_expressions", "object_listings", "located_captions", "conjunction_counts", "count_questions",
                     "referring_questions", "reasoning", "decoy_scenes"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability between 0 and 1, not {getattr(self, name)}.")
        if not self.listing_leads or not set(self.listing_leads) <= set(LISTING_ORDERS):
            raise ValueError(f"listing_leads are some of {list(LISTING_ORDERS)}, not {self.listing_leads}.")
        if not self.referring_kinds or not set(self.referring_kinds) <= set(REFERRABLE_KINDS):
            raise ValueError(f"referring_kinds are some of {list(REFERRABLE_KINDS)}, not {self.referring_kinds}.")
        if list(self.descriptions) != list(DESCRIPTIONS):
            raise ValueError(f"descriptions gives a probability to each of {list(DESCRIPTIONS)}, in that order.")


def conversation(scene: Scene, rng: np.random.Generator, recipe: TextRecipe | None = None) -> list[tuple[str, str]]:
    """(instruction, answer) turns of one sampled conversation about ``scene``, as ``recipe`` (default: ``TextRecipe()``) says."""
    recipe = TextRecipe() if recipe is None else recipe
    turns = []
    if rng.random() < DESCRIBE_FIRST:
        kind = rng.choice(list(recipe.descriptions), p=list(recipe.descriptions.values()))
        if kind == "expression" and scene.expressions:
            expressions = scene.expressions
            if recipe.relational_expressions > 0:
                relational = [e for e in expressions if e.kind == "relational"]
                if relational and rng.random() < recipe.relational_expressions:
                    expressions = relational
            expression = expressions[int(rng.integers(len(expressions)))]
            said = grounded_expression(scene, expression, recipe.ranked_expressions, recipe.located_expressions) \
                if recipe.grounded_expressions else expression.text
            turns.append((DESCRIBE, said))
        elif kind == "inventory":
            turns.append((LIST_OBJECTS, shuffled_inventory(scene, rng) if recipe.shuffle_inventory else scene.inventory))
        elif kind == "narrative":
            turns.append((DESCRIBE, scene.narrative))
        elif recipe.object_listings > 0 and rng.random() < recipe.object_listings:
            turns.append((NAME_OBJECTS, object_listing(scene, rng, recipe.listing_leads)))
        elif recipe.located_captions > 0 and rng.random() < recipe.located_captions:
            turns.append((LOCATE_OBJECTS, located_caption(scene, rng)))
        else:
            turns.append((DESCRIBE, scene.caption))
    n_questions = QUESTIONS_AFTER_DESCRIPTION if turns else QUESTIONS_ALONE
    questions = [scene.qa[i] for i in rng.permutation(len(scene.qa))[:n_questions]]
    if recipe.count_questions > 0 and rng.random() < recipe.count_questions:
        counted = scene.objects[int(rng.integers(len(scene.objects)))]
        if recipe.conjunction_counts > 0 and rng.random() < recipe.conjunction_counts:
            pair = list(CONJUNCTIONS)[int(rng.integers(len(CONJUNCTIONS)))]
            questions[-1] = conjunction_count(scene.objects, counted, pair)
        else:
            questions[-1] = count_question(scene.objects, counted.shape)
    if recipe.referring_questions > 0:
        referring = referring_questions(scene, recipe.referring_kinds)
        if referring and rng.random() < recipe.referring_questions:
            questions[0] = referring[int(rng.integers(len(referring)))]
    turns += [(q.question, q.answer) for q in questions]
    if recipe.reasoning > 0:
        reasoning = reasoning_questions(scene.objects)
        if reasoning and rng.random() < recipe.reasoning:
            r = reasoning[int(rng.integers(len(reasoning)))]
            turns.append((r.question, r.answer))
    return turns


def encode(turns: list[tuple[str, str]], tokenizer: PreTrainedTokenizerFast, n_image_tokens: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE outside answers) of the chat-formatted conversation."""

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    input_ids, labels = [tokenizer.bos_token_id], [IGNORE]
    for t, (instruction, answer) in enumerate(turns):
        image = "<image>" * n_image_tokens + "\n" if t == 0 else ""
        prompt = ids(f"USER: {image}{instruction} ASSISTANT: ")
        reply = ids(answer) + [tokenizer.eos_token_id]
        input_ids += prompt + reply
        labels += [IGNORE] * len(prompt) + reply
    return input_ids, labels


def collate(samples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample: input_ids, attention_mask, labels, each (batch, seq) int64."""
    n = max(len(ids) for ids, _ in samples)
    input_ids = torch.full((len(samples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), n), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), n), dtype=torch.long)
    for i, (ids, lab) in enumerate(samples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
