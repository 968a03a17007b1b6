"""Grounded conversation generation (GCG) and reasoning segmentation on the shapes world, scored exactly.

GCG: "Please give me a description of the image." is answered by the frozen LMM, each object phrase of the
answer is grounded (``apps.ground_answer``), and the masks are scored as GLaMM's GCG evaluation scores them:

- ``recall``: ground-truth objects matched one to one, greedily by IoU (highest first), while the best
  remaining pair has IoU >= 0.5 and its phrase matches the object (GLaMM: BERT similarity >= 0.5; here, where
  every word is exact, the phrase's size, colour and shape words are all the object's);
- ``miou``: per image, predicted and true masks paired greedily by IoU while any pair overlaps, the mean of
  the paired IoUs (0 for an image with none), averaged over images;
- ``ap50``: COCO mask AP at IoU 0.5 (pycocotools' COCOeval, one category, each phrase scored by its mean
  mask probability);
- ``caption``: per object, the answer names its size, colour and shape (``organism.scores.caption_hits``).

Reasoning segmentation: each ``shapes.reasoning_questions`` question ("which object is the largest?") is
answered, the answer's first object phrase is segmented, and gIoU (mean per-question IoU) and cIoU (summed
intersections over summed unions) are scored against the answer's object; an answer with no phrase scores
IoU 0 and is counted. Baselines on the same phrases: a random object of the scene, a centred disk, and, given
localization heads, attention alone: their maps of the phrase thresholded, no parameter trained (``BASELINES``). ``evaluate_reasonseg`` does the same on the public ReasonSeg format, LISA's ignored
pixels left out.

Visual chain of thought: on the ``zoom`` split (3-5 objects on a canvas four times wider, so that in the model's
view each is a few pixels across), every question about one object ("what shape is the red object?") is
answered three ways: on the whole image (``direct``), on a crop around the object F-LMM grounds from the
question's phrase (``cot``, ``apps.chain_of_thought``), and on the same crop around the object's true mask
(``oracle``, the most the grounding step could give). Crops are at least ``IMAGE_SIZE`` wide, the scale the
world is drawn at, so an object's size word stays readable on its crop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm.auto import tqdm

from .apps import GroundedAnswer, PhraseSource, chain_of_thought, crop_box, generate, ground_answer, shapes_phrases
from .backbones import Backbone
from .data.reasonseg import ReasonSegSample, iou_ignoring
from .data.shapes import COLOURS, DESCRIBE, IMAGE_SIZE, PLURALS, QA, SHAPES, SIZES, Obj, Scene, reasoning_questions
from .decoder import Grounder
from .metrics import head_heatmap, intersection_union
from .organism.scores import caption_hits

IOU_THRESHOLD = 0.5


def iou_matrix(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """(len(a), len(b)) IoU of every pair of (H, W) bool masks (0 where both are empty)."""
    out = np.zeros((len(a), len(b)))
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            union = np.logical_or(x, y).sum()
            out[i, j] = np.logical_and(x, y).sum() / union if union else 0.0
    return out


def greedy_pairs(scores: np.ndarray, admissible: np.ndarray | None = None, threshold: float = 0.0) -> list[tuple[int, int]]:
    """One-to-one (row, column) pairs taken by the highest remaining score, GLaMM's matching: it stops at the
    first best pair whose score is not above ``threshold`` (``>= threshold`` when ``admissible`` is given, and
    that pair must be admissible)."""
    scores = scores.astype(float).copy()
    pairs = []
    while scores.size and scores.max() > 0:
        i, j = np.unravel_index(np.argmax(scores), scores.shape)
        if admissible is not None and (scores[i, j] < threshold or not admissible[i, j]):
            break
        pairs.append((int(i), int(j)))
        scores[i, :] = 0
        scores[:, j] = 0
    return pairs


def phrase_fits(phrase: str, obj: Obj) -> bool:
    """Every size, colour and shape word of ``phrase`` is ``obj``'s (plural shape words count as the shape)."""
    words = phrase.split()
    singular = {plural: shape for shape, plural in PLURALS.items()}
    said = {"size": [w for w in words if w in SIZES], "colour": [w for w in words if w in COLOURS],
            "shape": [singular.get(w, w) for w in words if w in SHAPES or w in singular]}
    return bool(said["shape"]) and all(getattr(obj, key) == w for key, ws in said.items() for w in ws)


def gcg_scores(scene: Scene, answer: GroundedAnswer) -> dict:
    """One image's GCG counts: matched objects, its mIoU, and per object the caption hits."""
    truth = [o.mask for o in scene.objects]
    predicted = [p.mask for p in answer.phrases]
    ious = iou_matrix(truth, predicted)
    fits = np.array([[phrase_fits(p.text, o) for p in answer.phrases] for o in scene.objects], bool).reshape(ious.shape)
    matched = greedy_pairs(ious, fits, IOU_THRESHOLD)
    paired = greedy_pairs(ious)
    return {"objects": len(truth), "matched": len(matched), "miou": float(np.mean([ious[i, j] for i, j in paired])) if paired else 0.0,
            "caption": caption_hits(answer.text, scene)}


def ap50(scenes: Sequence[Scene], answers: Sequence[GroundedAnswer]) -> float:
    """COCO mask AP at IoU 0.5 (pycocotools), every object one category, each phrase's mask scored by its score."""
    height, width = scenes[0].image.shape[:2]
    images = [{"id": k, "height": height, "width": width} for k in range(len(scenes))]
    truth, predictions = [], []
    for k, (scene, answer) in enumerate(zip(scenes, answers)):
        for o in scene.objects:
            rle = mask_utils.encode(np.asfortranarray(o.mask.astype(np.uint8)))
            truth.append({"id": len(truth) + 1, "image_id": k, "category_id": 1, "segmentation": rle, "iscrowd": 0,
                          "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist()})
        for p in answer.phrases:
            rle = mask_utils.encode(np.asfortranarray(p.mask.astype(np.uint8)))
            predictions.append({"image_id": k, "category_id": 1, "segmentation": rle, "score": p.score})
    if not predictions:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": truth, "categories": [{"id": 1, "name": "object"}]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(predictions), "segm")
        evaluation.params.iouThrs = np.array([IOU_THRESHOLD])
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, 0, 0, -1]  # (recall thresholds,) all areas, 100 detections
    return float(np.mean(precision[precision > -1])) if (precision > -1).any() else 0.0


# Baselines that keep the answer's phrases and replace their masks: a random object of the scene (chance at
# choosing), a centred disk of the median object area (where objects tend to be), and, where heads are given,
# attention alone: the heads' maps of the phrase as a heat map (metrics.head_heatmap) >= ATTENTION_THRESHOLD.
BASELINES = ("random_object", "centre_prior", "attention")
ATTENTION_THRESHOLD = 0.5
CENTRE_RADIUS = 10.0  # px: a disk of about the median object area (small and large objects alike)


def centre_prior(size: tuple[int, int], radius: float = CENTRE_RADIUS) -> np.ndarray:
    """(H, W) bool disk of ``radius`` at the image centre."""
    y, x = np.mgrid[0 : size[0], 0 : size[1]] + 0.5
    return (y - size[0] / 2) ** 2 + (x - size[1] / 2) ** 2 <= radius**2


def attention_masks(answer: GroundedAnswer, heads: Sequence[tuple[int, int]], size: tuple[int, int]) -> list[np.ndarray]:
    """Per phrase of ``answer``, (H, W) bool: attention alone, ``heads``' fused maps as a heat map >= ATTENTION_THRESHOLD."""
    if not answer.phrases:
        return []
    return list((head_heatmap(answer.record.fused(), heads, size) >= ATTENTION_THRESHOLD).numpy())


def baseline_answer(answer: GroundedAnswer, scene: Scene, baseline: str, rng: np.random.Generator,
                    heads: Sequence[tuple[int, int]] | None = None) -> GroundedAnswer:
    """``answer`` with each phrase's mask replaced by the ``baseline``'s (``BASELINES``; "attention" needs ``heads``);
    scores stay."""
    size = scene.image.shape[:2]
    if baseline == "attention":
        masks = attention_masks(answer, heads, size)
    elif baseline == "random_object":
        masks = [scene.objects[int(rng.integers(len(scene.objects)))].mask for _ in answer.phrases]
    else:
        masks = [centre_prior(size) for _ in answer.phrases]
    phrases = [dataclasses.replace(p, mask=m) for p, m in zip(answer.phrases, masks)]
    return dataclasses.replace(answer, phrases=phrases)


def evaluate_gcg(backbone: Backbone, grounder: Grounder, scenes: Sequence[Scene], max_new_tokens: int = 48,
                 progress: bool = True, seed: int = 0, heads: Sequence[tuple[int, int]] | None = None
                 ) -> tuple[pd.DataFrame, dict]:
    """GCG on ``scenes``: per-image rows (scene, answer, objects, phrases, matched, miou) and the summary
    (recall, miou, ap50, caption attributes, answers without a phrase), and the same recall / mIoU / AP50 for
    each of ``BASELINES`` on the same phrases ("<baseline>/recall", ...; ``seed`` draws the random objects;
    "attention" only with ``heads``, chosen on other scenes)."""
    rng = np.random.default_rng(seed)
    answers, rows = [], []
    caption: dict[str, list[bool]] = {}
    baselines: dict[str, list[GroundedAnswer]] = {b: [] for b in BASELINES if heads or b != "attention"}
    for scene in tqdm(scenes, desc="gcg", disable=not progress):
        answer = ground_answer(backbone, grounder, scene.image, DESCRIBE, shapes_phrases, max_new_tokens)
        answers.append(answer)
        scores = gcg_scores(scene, answer)
        for key, hits in scores.pop("caption").items():
            caption.setdefault(key, []).extend(hits)
        row = {"scene": f"{scene.split}/{scene.index}", "answer": answer.text, "phrases": len(answer.phrases),
               "note": answer.note, **scores}
        for name, kept in baselines.items():
            kept.append(baseline_answer(answer, scene, name, rng, heads))
            other = gcg_scores(scene, kept[-1])
            row |= {f"{name}/matched": other["matched"], f"{name}/miou": other["miou"]}
        rows.append(row)
    frame = pd.DataFrame(rows)
    summary = {"images": len(frame), "recall": frame["matched"].sum() / frame["objects"].sum(), "miou": frame["miou"].mean(),
               "ap50": ap50(scenes, answers), "no_phrase": int((frame["phrases"] == 0).sum())}
    summary |= {f"caption_{key}": float(np.mean(hits)) for key, hits in caption.items()}
    for name, kept in baselines.items():
        summary |= {f"{name}/recall": frame[f"{name}/matched"].sum() / frame["objects"].sum(),
                    f"{name}/miou": frame[f"{name}/miou"].mean(), f"{name}/ap50": ap50(scenes, kept)}
    return frame, summary


def evaluate_reasoning(backbone: Backbone, grounder: Grounder, scenes: Sequence[Scene], progress: bool = True,
                       heads: Sequence[tuple[int, int]] | None = None) -> tuple[pd.DataFrame, dict]:
    """Reasoning segmentation on every reasoning question of ``scenes``: per-question rows (scene, question,
    kind, answer, right (the answer is the expected phrase), intersection, union, iou) and the summary (gIoU,
    cIoU, answer accuracy overall and by kind, answers without a phrase), with ``BASELINES`` ("attention" only
    with ``heads``)."""
    rows = []
    items = [(s, r) for s in scenes for r in reasoning_questions(s.objects)]
    for scene, question in tqdm(items, desc="reasoning", disable=not progress):
        answer = ground_answer(backbone, grounder, scene.image, question.question, _first_phrase, 8)
        truth = scene.objects[question.target].mask
        predicted = answer.phrases[0].mask if answer.phrases else np.zeros_like(truth)
        inter, union = intersection_union(predicted, truth)
        row = {"scene": f"{scene.split}/{scene.index}", "question": question.question, "kind": question.kind,
               "answer": answer.text, "right": answer.text.removesuffix(".").strip() == question.answer,
               "grounded": bool(answer.phrases), "intersection": inter, "union": union, "iou": inter / union}
        # Baselines, in expectation: any of the scene's objects at random; the centre prior.
        pairs = [intersection_union(o.mask, truth) for o in scene.objects]
        row |= {"random_object/intersection": np.mean([i for i, _ in pairs]), "random_object/union": np.mean([u for _, u in pairs]),
                "random_object/iou": np.mean([i / u for i, u in pairs])}
        i, u = intersection_union(centre_prior(truth.shape), truth)
        row |= {"centre_prior/intersection": i, "centre_prior/union": u, "centre_prior/iou": i / u}
        if heads:
            i, u = intersection_union((attention_masks(answer, heads, truth.shape) or [np.zeros_like(truth)])[0], truth)
            row |= {"attention/intersection": i, "attention/union": u, "attention/iou": i / u}
        rows.append(row)
    frame = pd.DataFrame(rows)
    summary = {"questions": len(frame), "giou": frame["iou"].mean(), "ciou": frame["intersection"].sum() / frame["union"].sum(),
               "answer_accuracy": frame["right"].mean(), "no_phrase": int((~frame["grounded"]).sum())}
    for name in (b for b in BASELINES if f"{b}/iou" in frame):
        summary |= {f"{name}/giou": frame[f"{name}/iou"].mean(),
                    f"{name}/ciou": frame[f"{name}/intersection"].sum() / frame[f"{name}/union"].sum()}
    for kind, part in frame.groupby("kind"):
        summary[f"{kind}/giou"] = part["iou"].mean()
        summary[f"{kind}/answer_accuracy"] = part["right"].mean()
    return frame, summary


def _first_phrase(text: str) -> list[tuple[int, int]]:
    return shapes_phrases(text)[:1]


def whole_answer(text: str) -> list[tuple[int, int]]:
    """The answer as one phrase, its final full stop left out: what a free-form answer to "what ...?" names."""
    body = text.rstrip().removesuffix(".").rstrip()
    return [(0, len(body))] if body else []


def evaluate_reasonseg(backbone: Backbone, grounder: Grounder, samples: Iterable[ReasonSegSample],
                       phrases: PhraseSource = whole_answer, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Reasoning segmentation on ReasonSeg-format samples (``data.reasonseg``): each question answered, the
    answer's first phrase (``phrases``: default the whole answer) segmented, gIoU and cIoU with LISA's ignored
    pixels left out. Rows: sample, question, answer, intersection, union, iou; an answer with no phrase scores
    IoU 0 and is counted (``no_phrase``)."""
    rows = []
    for sample in tqdm(list(samples), desc="reasonseg", disable=not progress):
        for question in sample.questions:
            answer = ground_answer(backbone, grounder, sample.image_path, question, phrases)
            predicted = answer.phrases[0].mask if answer.phrases else np.zeros(sample.mask.shape, bool)
            inter, union = iou_ignoring(predicted, sample.mask)
            rows.append({"sample": sample.sample_id, "question": question, "answer": answer.text, "note": answer.note,
                         "intersection": inter, "union": union, "iou": inter / union if union else 0.0})
    frame = pd.DataFrame(rows)
    summary = {"questions": len(frame), "giou": frame["iou"].mean(), "ciou": frame["intersection"].sum() / frame["union"].sum(),
               "no_phrase": int((frame["note"] != "").sum())}
    return frame, summary



# Question kinds about one object, which a crop around that object can answer.
COT_KINDS = ("colour", "shape", "size")


def asked_object(scene: Scene, qa: QA) -> tuple[str, int]:
    """The phrase of an object question ("what shape is the red object?" -> "the red object") and the index of the
    one object of ``scene`` it names (its words other than "the" and "object" are all that object's)."""
    phrase = qa.question.removesuffix("?").split(" is ", 1)[1]
    words = set(phrase.split()) - {"the", "object"}
    (target,) = [i for i, o in enumerate(scene.objects) if words <= {o.size, o.colour, o.shape}]
    return phrase, target


def evaluate_cot(backbone: Backbone, grounder: Grounder, scenes: Sequence[Scene], context: float = 3.0,
                 min_side: int = IMAGE_SIZE, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Visual chain of thought on the object questions (``COT_KINDS``) of ``scenes`` (see the module docstring).

    Rows: scene, question, kind, truth, and per way (direct, cot, oracle) its answer and whether it is right;
    ``in_crop``: the grounded crop holds at least half of the object's pixels; ``empty_mask``: the grounding gave
    no pixel (the crop is centred on the most probable one). Summary: accuracy of each way overall and by kind,
    ``in_crop`` and ``empty_mask`` rates."""
    rows = []
    items = [(s, qa) for s in scenes for qa in s.qa if qa.kind in COT_KINDS]
    for scene, qa in tqdm(items, desc="cot", disable=not progress):
        phrase, target = asked_object(scene, qa)
        truth = scene.objects[target].mask
        chain = chain_of_thought(backbone, grounder, scene.image, qa.question, phrase, context, min_side)
        x0, y0, x1, y1 = crop_box(truth, truth.astype(float), context, min_side)
        answers = {"direct": generate(backbone, scene.image, qa.question, 4)[0], "cot": chain.text,
                   "oracle": generate(backbone, scene.image[y0:y1, x0:x1], qa.question, 4)[0]}
        cx0, cy0, cx1, cy1 = chain.box
        row = {"scene": f"{scene.split}/{scene.index}", "question": qa.question, "kind": qa.kind, "truth": qa.answer,
               "in_crop": truth[cy0:cy1, cx0:cx1].sum() >= 0.5 * truth.sum(), "empty_mask": chain.note == "empty mask"}
        for way, text in answers.items():
            row |= {way: text, f"{way}/right": text.removesuffix(".").split()[:1] == [qa.answer]}
        rows.append(row)
    frame = pd.DataFrame(rows)
    summary: dict = {"questions": len(frame)}
    summary |= {f"{way}/accuracy": frame[f"{way}/right"].mean() for way in ("direct", "cot", "oracle")}
    summary |= {"in_crop": frame["in_crop"].mean(), "empty_mask": int(frame["empty_mask"].sum())}
    for kind, part in frame.groupby("kind"):
        summary |= {f"{kind}/{way}": part[f"{way}/right"].mean() for way in ("direct", "cot", "oracle")}
    return frame, summary
