"""Scores of an organism LMM on held-out scenes: greedy captions, question answering, pointing game.

- ``caption_accuracy``: the greedy answer to ``DESCRIBE`` is parsed into "a <size> <colour> <shape>"
  phrases, matched one-to-one with the scene's objects; an object without a phrase counts wrong.
- ``qa_accuracy``: the first word of the greedy answer to each question, exact match; ``majority_baseline``:
  always giving each kind's most common answer.
  ``reasoning_accuracy``: the whole greedy answer to questions answered by naming an object ("which object
  is the largest?" -> "the large red cross", ``shapes.reasoning_questions``).
  ``referring_accuracy``: the same for questions that only a relational or superlative expression's whole
  meaning answers (``text.referring_questions``: "what size is the red cross left of the blue square?").
- ``pointing``: for each object's caption phrase (teacher-forced caption after ``DESCRIBE``), each
  head's phrase-to-image attention (recorded with ``Backbone.record``, mean over the phrase's tokens)
  on the patch grid is scored with the project's ``pointing_game``: is the argmax cell inside the
  object's mask (cell coverage >= 0.5, or >= half the best cell's for masks smaller than a cell)? A phrase
  whose words fit several objects (two "small green triangles") names all of them: a hit on any counts.
  "Wrong object" is the same test against the other objects' masks; "position" against the object whose
  left-to-right rank is the phrase's place in the caption, over the phrases that name another object
  (captions name objects in a random order: a head that follows list position scores there). The uniform-map baseline is
  ``pointing_game`` of a flat map (the share of the grid's cells that count as inside).
  ``pointing_by_word`` scores each word of the phrase on its own (article, size, colour, shape).
  ``Pointing.shared`` splits the phrases by what their object shares with another object of the scene (not a
  look-alike): a head that finds objects by one word ("all the red ones") points well only where no other
  object shares that word's attribute; under "colour+size", only the shape word (the phrase's last) can tell the
  object from another.
- ``expression_pointing``: the same for the referring expressions, read as F-LMM reads them (the bare
  expression after ``DESCRIBE``, its tokens' maps pooled as ``phrases.pool``: mean, or the last token
  alone), by kind (attribute, relational, superlative) and attribute expressions by attributes said.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

from flmm_probe.backbones import Backbone, load_backbone
from flmm_probe.data.redrawn import SPLIT as REDRAWN
from flmm_probe.data.redrawn import shapes_scene
from flmm_probe.data.shapes import COLOURS, DESCRIBE, QA, SHAPES, SIZES, Scene, expression_group, reasoning_questions
from flmm_probe.metrics import mask_to_grid, pointing_game
from flmm_probe.organism.sam import box_miou, load_saved_sam
from flmm_probe.organism.text import IGNORE, REFERRABLE_KINDS, collate, encode, referring_questions
from flmm_probe.phrases import POOLINGS, pool

_PHRASE = re.compile(rf"\ban? ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b")


def _prompt(processor: LlavaProcessor, instruction: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


@torch.no_grad()
def generate(model: LlavaForConditionalGeneration, processor: LlavaProcessor, images: list[np.ndarray],
             instructions: list[str], max_new_tokens: int = 48, batch: int = 50) -> list[str]:
    """Greedy answers, one per (image (H, W, 3) uint8, instruction)."""
    out: list[str] = []
    for i in range(0, len(images), batch):
        inputs = processor(images=images[i : i + batch], text=[_prompt(processor, t) for t in instructions[i : i + batch]],
                           padding=True, return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=processor.tokenizer.pad_token_id)
        out += processor.tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def caption_accuracy(model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[Scene]) -> dict[str, float]:
    """Fraction of objects whose size / colour / shape the greedy caption gets right (and all three).

    The caption's "a <size> <colour> <shape>" phrases are matched one-to-one with the scene's objects
    (the assignment that agrees on the most attributes; captions may list objects in any order); an
    object left without a phrase counts wrong on every attribute. ``count`` is the fraction of
    captions with exactly one phrase per object (extra phrases are errors too).
    """
    captions = generate(model, processor, [s.image for s in scenes], [DESCRIBE] * len(scenes))
    hits: dict[str, list[bool]] = {"size": [], "colour": [], "shape": [], "object": [], "count": []}
    for scene, caption in zip(scenes, captions):
        for key, values in caption_hits(caption, scene).items():
            hits[key] += values
    return {k: float(np.mean(v)) for k, v in hits.items()}


def caption_hits(caption: str, scene: Scene) -> dict[str, list[bool]]:
    """Per object of ``scene``: is its size / colour / shape / all three right in ``caption``; and
    ``count``: [one phrase per object]. Phrases and objects are matched one-to-one, most agreement first."""
    said = _PHRASE.findall(caption)
    truth = [(o.size, o.colour, o.shape) for o in scene.objects]
    agree = np.array([[sum(a == b for a, b in zip(t, p)) for p in said] for t in truth]).reshape(len(truth), len(said))
    matched = dict(zip(*linear_sum_assignment(-agree)))
    hits: dict[str, list[bool]] = {"size": [], "colour": [], "shape": [], "object": []}
    for i, t in enumerate(truth):
        got = said[matched[i]] if i in matched else ("", "", "")
        ok = [g == w for g, w in zip(got, t)]
        for key, value in zip(("size", "colour", "shape"), ok):
            hits[key].append(value)
        hits["object"].append(all(ok))
    hits["count"] = [len(said) == len(truth)]
    return hits


def qa_accuracy(model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[Scene]) -> dict[str, float]:
    """Exact-match accuracy of the greedy one-word answers, overall and per question kind."""
    return _answer_accuracy(model, processor, [(s.image, qa) for s in scenes for qa in s.qa])


def referring_accuracy(model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[Scene]) -> dict[str, float]:
    """``qa_accuracy`` of the questions only an expression's whole meaning answers ("what size is the red cross
    left of the blue square?", ``text.referring_questions``), overall and by the expression's kind: does the
    organism know which object a relational or superlative expression means (chance: about one half)?"""
    return _answer_accuracy(model, processor, [(s.image, qa) for s in scenes for qa in referring_questions(s, REFERRABLE_KINDS)])


def _answer_accuracy(model: LlavaForConditionalGeneration, processor: LlavaProcessor,
                     items: list[tuple[np.ndarray, QA]], words: int = 1) -> dict[str, float]:
    """Exact match of the greedy answer's first ``words`` words, overall and per ``qa.kind``."""
    answers = generate(model, processor, [im for im, _ in items], [qa.question for _, qa in items], max_new_tokens=words + 2)
    right: dict[str, list[bool]] = {"all": []}
    for (_, qa), answer in zip(items, answers):
        ok = answer.removesuffix(".").split()[:words] == qa.answer.split()
        right["all"].append(ok)
        right.setdefault(qa.kind, []).append(ok)
    return {k: float(np.mean(v)) for k, v in right.items()}


def majority_baseline(scenes: list[Scene]) -> dict[str, float]:
    """Per question kind (and "all"), the accuracy of always giving that kind's most common answer on ``scenes``:
    the rate a model that does not look at the image reaches (a count question mostly answers "zero")."""
    answers: dict[str, list[str]] = {}
    for qa in (qa for s in scenes for qa in s.qa):
        answers.setdefault(qa.kind, []).append(qa.answer)
    best = {kind: max(Counter(a).values()) for kind, a in answers.items()}
    return {"all": sum(best.values()) / sum(len(a) for a in answers.values())} | \
        {kind: best[kind] / len(a) for kind, a in answers.items()}


def reasoning_accuracy(model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[Scene]) -> dict[str, float]:
    """Exact match of the greedy answer to each ``shapes.reasoning_questions`` question ("which object is the
    largest?" -> "the large red cross"), overall and by kind (superlative, negation)."""
    items = [(s.image, QA(r.question, r.answer, r.kind)) for s in scenes for r in reasoning_questions(s.objects)]
    return _answer_accuracy(model, processor, items, words=4)


@torch.no_grad()
def teacher_forced_accuracy(model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[Scene],
                            batch: int = 64) -> dict[str, float]:
    """Next-token accuracy on the answers, teacher-forced: caption tokens, and the first answer token of
    each question kind (one single-turn conversation per question). Cheap enough to log during training."""
    n_image = int(model.config.image_seq_length)
    items = [(s, [(DESCRIBE, s.caption)], "caption") for s in scenes]
    items += [(s, [(qa.question, qa.answer)], qa.kind) for s in scenes for qa in s.qa]
    right: dict[str, list[float]] = {}
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        inputs = collate([encode(turns, processor.tokenizer, n_image) for _, turns, _ in chunk], processor.tokenizer.pad_token_id)
        pixels = processor.image_processor(images=[s.image for s, _, _ in chunk], return_tensors="pt")["pixel_values"]
        logits = model(input_ids=inputs["input_ids"].to(model.device), attention_mask=inputs["attention_mask"].to(model.device),
                       pixel_values=pixels.to(model.device, model.dtype)).logits.cpu()
        labels = inputs["labels"][:, 1:]
        hit = logits[:, :-1].argmax(-1) == labels
        for row, (_, _, kind) in enumerate(chunk):
            answer = (labels[row] != IGNORE).nonzero()[:, 0]
            if kind != "caption":
                answer = answer[:1]  # the one-word answer, not the "</s>" after it
            right.setdefault(kind, []).extend(hit[row, answer].float().tolist())
    out = {k: float(np.mean(v)) for k, v in right.items()}
    out["qa"] = float(np.mean([v for k, vs in right.items() if k != "caption" for v in vs]))
    return out


@dataclass
class Pointing:
    """Pointing game over phrases. hit / wrong_object: (layer, head) fractions; uniform: chance level.

    position: (layer, head) pointing at the object whose left-to-right rank is the phrase's place in its list,
    over the ``n_displaced`` phrases that name another object (captions only; NaN elsewhere): what a head that
    follows list position instead of words would score.
    shared: per ``SHARED`` key, (layer, head) hit over the phrases whose object shares that attribute with another
    object of its scene, and their number; "none": the phrases whose object shares none (captions only).
    """

    hit: np.ndarray
    wrong_object: np.ndarray
    uniform: float
    n_phrases: int
    position: np.ndarray | None = None
    n_displaced: int = 0
    shared: dict[str, tuple[np.ndarray, int]] | None = None

    @property
    def best_head(self) -> tuple[int, int]:
        layer, head = np.unravel_index(int(self.hit.argmax()), self.hit.shape)
        return int(layer), int(head)


def answer_maps(backbone: Backbone, scene: Scene, answer: str) -> torch.Tensor:
    """Each token of ``answer`` (the answer to ``DESCRIBE``, recorded by ``Backbone.record`` with each token as a
    phrase): its attention over the image patches. Returns (token, layer, head, gy, gx)."""
    tokens = backbone.processor.tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return backbone.record(scene.image, answer, [tuple(span) for span in tokens], hidden_states=False).maps["global"]


def caption_maps(backbone: Backbone, scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """Each caption token's attention over the image patches, per head, and the phrase each token belongs to.

    Returns maps (token, layer, head, gy, gx) for the tokens of the caption's phrases, in order, and
    owner (token,) int64: the index of the token's phrase in ``scene.caption_phrases``.
    """
    offsets = backbone.processor.tokenizer(scene.caption, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    rows, owner = [], []
    for p, phrase in enumerate(scene.caption_phrases):
        for t, (a, b) in enumerate(offsets):
            if a < phrase.end and b > phrase.start:
                rows.append(t)
                owner.append(p)
    return answer_maps(backbone, scene, scene.caption)[rows], torch.tensor(owner)


# The words of a caption phrase, "a large red circle": the article, size, colour and shape.
PHRASE_WORDS = ("article", "size", "colour", "shape")
# What a phrase's object may share with another object of its scene (a look-alike shares all three).
# "colour+size": another object has its colour and its size, so only the phrase's last word, the shape, tells
# them apart: a causal model cannot know which one "a large red" starts to name.
SHARED = ("colour", "shape", "size", "colour+size", "none")


def _shared(scene: Scene, named: list[int]) -> list[str]:
    """The ``SHARED`` keys of a phrase naming ``named``: the attributes some other object has the same."""
    own = scene.objects[named[0]]
    others = [o for i, o in enumerate(scene.objects) if i not in named]
    said = [a for a in SHARED[:-1] if any(all(getattr(o, b) == getattr(own, b) for b in a.split("+")) for o in others)]
    return said or ["none"]


def pointing(model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[Scene]) -> Pointing:
    """Pointing game (``flmm_probe.metrics.pointing_game``) of every head for every object's caption phrase."""
    return pointing_by_word(model, processor, scenes)["phrase"]


def pointing_by_word(model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[Scene]) -> dict[str, Pointing]:
    """``pointing`` of each phrase's mean map ("phrase") and of each of its words' maps (``PHRASE_WORDS``):
    which word's attention finds the object."""
    backbone = load_backbone(model, processor, instruction=DESCRIBE)
    kinds = ("phrase",) + PHRASE_WORDS
    hits: dict[str, list] = {k: [] for k in kinds}
    wrong: dict[str, list] = {k: [] for k in kinds}
    position: dict[str, list] = {k: [] for k in kinds}
    shares: list[list[str]] = []
    uniform = []
    for scene in scenes:
        tokens, owner = caption_maps(backbone, scene)  # (token, layer, head, gy, gx), (token,)
        grid = tuple(tokens.shape[-2:])
        covers = [mask_to_grid(o.mask, grid) for o in scene.objects]  # each (gy, gx)
        for p, phrase in enumerate(scene.caption_phrases):
            own = tokens[owner == p]  # (word, layer, head, gy, gx)
            assert len(own) == len(PHRASE_WORDS), phrase.text
            # The objects the phrase's words name: its own and any look-alike (same size, colour and shape),
            # which no reading of the words can tell apart.
            named = [i for i, o in enumerate(scene.objects) if o.words == scene.objects[phrase.object_ids[0]].words]
            cover = torch.stack([covers[i] for i in named]).amax(0)
            for kind, phrase_map in zip(kinds, [own.mean(dim=0), *own]):  # each (layer, head, gy, gx)
                hits[kind].append(pointing_game(phrase_map, cover).numpy())  # (layer, head)
                others = [pointing_game(phrase_map, c).numpy() for i, c in enumerate(covers) if i not in named]
                wrong[kind].append(np.sum(others, axis=0) if others else np.zeros(phrase_map.shape[:2]))
                if p not in named:  # objects are indexed left to right: object p holds the phrase's list rank
                    position[kind].append(pointing_game(phrase_map, covers[p]).numpy())
            uniform.append(pointing_game(torch.ones(grid), cover).item())
            shares.append(_shared(scene, named))

    def shared(kind: str) -> dict[str, tuple[np.ndarray, int]]:
        rows = {key: [h for h, keys in zip(hits[kind], shares) if key in keys] for key in SHARED}
        return {key: (np.mean(r, axis=0) if r else np.full(hits[kind][0].shape, np.nan), len(r)) for key, r in rows.items()}

    return {k: Pointing(np.mean(hits[k], axis=0), np.mean(wrong[k], axis=0), float(np.mean(uniform)), len(uniform),
                        np.mean(position[k], axis=0) if position[k] else np.full(hits[k][0].shape, np.nan), len(position[k]),
                        shared(k))
            for k in kinds}


def expression_pointing(model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[Scene],
                        pooling: str = "mean") -> dict[str, Pointing]:
    """``pointing`` of each referring expression's map, as F-LMM reads it: the bare expression teacher-forced
    after ``DESCRIBE``, its tokens' maps pooled (``phrases.pool``'s ``pooling``); for all expressions ("all"),
    by kind, and attribute expressions also by how many attributes they say (``shapes.expression_group``)."""
    backbone = None if model is None else load_backbone(model, processor, instruction=DESCRIBE)
    hits: dict[str, list] = {}
    wrong: dict[str, list] = {}
    uniform: dict[str, list] = {}
    for scene in scenes:
        covers = None
        for e in scene.expressions:
            maps = answer_maps(backbone, scene, e.text)  # (token, layer, head, gy, gx)
            tokens = torch.arange(len(maps))  # pool merges (..., query, key) rows: (layer, head, token, gy * gx)
            expression_map = pool(maps.flatten(-2).movedim(0, -2), [tokens], pooling)[0].unflatten(-1, maps.shape[-2:])
            if covers is None:
                covers = [mask_to_grid(o.mask, tuple(expression_map.shape[-2:])) for o in scene.objects]
            others = [pointing_game(expression_map, c).numpy() for i, c in enumerate(covers) if i != e.target]
            for kind in dict.fromkeys(("all", e.kind, expression_group(e.text, e.kind))):
                hits.setdefault(kind, []).append(pointing_game(expression_map, covers[e.target]).numpy())
                wrong.setdefault(kind, []).append(np.sum(others, axis=0) if others else np.zeros(expression_map.shape[:2]))
                uniform.setdefault(kind, []).append(pointing_game(torch.ones(covers[0].shape), covers[e.target]).item())
    return {k: Pointing(np.mean(hits[k], axis=0), np.mean(wrong[k], axis=0), float(np.mean(uniform[k])), len(uniform[k]))
            for k in hits}


SPLITS = ("test", "compositional", "edge", "close", REDRAWN, "decoy")


def report(path: str, n: int = 100, splits: tuple[str, ...] = SPLITS, seed: int = 0,
           pointing_only: bool = False, expression_poolings: tuple[str, ...] = ("mean",)) -> dict:
    """All scores of the LMM saved at ``path`` on the first ``n`` scenes of each split (JSON-ready).

    Captions and questions use scenes ``0..n-1``; pointing uses the first ``n`` scenes with 3+ objects.
    Expression pointing is scored for each of ``expression_poolings``: "mean" under "expression_pointing",
    any other under "expression_pointing_<pooling>".
    """
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    out: dict = {"path": str(path)}
    for split in splits:
        scenes = [shapes_scene(split, i, seed) for i in range(n)]
        crowded = [s for s in (shapes_scene(split, i, seed) for i in range(3 * n)) if len(s.objects) >= 3][:n]
        by_word = pointing_by_word(model, processor, crowded)
        score = by_word["phrase"]
        layer, head = score.best_head
        out[split] = {} if pointing_only else {
            "caption": caption_accuracy(model, processor, scenes),
            "qa": qa_accuracy(model, processor, scenes),
            "qa_referring": referring_accuracy(model, processor, scenes),
            "qa_majority": majority_baseline(scenes),
            "reasoning": reasoning_accuracy(model, processor, scenes),
        }
        out[split] |= {
            "pointing_best_head": [layer, head],
            "pointing_best": float(score.hit[layer, head]),
            "wrong_object_best": float(score.wrong_object[layer, head]),
            "position_matched_best": float(score.position[layer, head]),
            "n_displaced": score.n_displaced,
            "pointing_best_per_layer": score.hit.max(axis=1).astype(np.float64).round(3).tolist(),
            "pointing_mean_per_layer": score.hit.mean(axis=1).astype(np.float64).round(3).tolist(),
            "wrong_object_per_layer_best": [float(score.wrong_object[i, j]) for i, j in enumerate(score.hit.argmax(axis=1))],
            "uniform": score.uniform,
            "pointing_best_by_word": {word: {"head": list(w.best_head), "pointing": float(w.hit[w.best_head]),
                                             "wrong_object": float(w.wrong_object[w.best_head])}
                                      for word, w in by_word.items() if word != "phrase"},
            "n_phrases": score.n_phrases,
            "pointing_best_by_shared": {key: {"pointing": float(hit[layer, head]) if n else None, "n_phrases": n}
                                        for key, (hit, n) in score.shared.items()},
        }
        for pooling in expression_poolings:
            key = "expression_pointing" + ("" if pooling == "mean" else f"_{pooling}")
            out[split][key] = {kind: {"head": list(e.best_head), "pointing": float(e.hit[e.best_head]),
                                      "wrong_object": float(e.wrong_object[e.best_head]), "uniform": e.uniform,
                                      "n_expressions": e.n_phrases}
                               for kind, e in expression_pointing(model, processor, crowded, pooling).items()}
    return out


def main(argv: list[str] | None = None) -> int:
    """``flmm-probe organism evaluate PATH [PATH ...]`` (or ``python -m flmm_probe.organism.scores``): JSON scores of saved organisms."""
    p = argparse.ArgumentParser(prog="flmm-probe organism evaluate", description=main.__doc__)
    p.add_argument("paths", nargs="+", help="save_pretrained folders of organism LMMs")
    p.add_argument("--n", type=int, default=100, help="scenes per split")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS),
                   help="shapes-world splits (edge: objects cut by the frame; close: objects 1-2 px apart; redrawn: "
                        "scenes of the same words drawn by other code, data.redrawn)")
    p.add_argument("--pointing-only", action="store_true", help="skip captions and questions")
    p.add_argument("--expression-pooling", nargs="+", choices=POOLINGS, default=["mean"], metavar="POOLING",
                   help=f"how an expression's token maps are merged for its pointing game, each scored: {', '.join(POOLINGS)} "
                        "(mean, as F-LMM; last: the expression's last token alone)")
    p.add_argument("--sam", help="folder of an organism SAM to score (box-prompted mIoU)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [report(path, args.n, tuple(args.splits), pointing_only=args.pointing_only,
                      expression_poolings=tuple(args.expression_pooling)) for path in args.paths]
    if args.sam:
        sam = load_saved_sam(Path(args.sam))
        results.append({"path": args.sam, **{s: {"box_miou": box_miou(sam, [shapes_scene(s, i) for i in range(args.n)])}
                                            for s in args.splits}})
    sys.stdout.write(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
