"""Score a fitted Grounder (docs/design.md, "Metrics"), and segment one image with it.

    grounder = load_grounder("runs/fit", sam)
    per_phrase, summary = evaluate(grounder, Store.open("runs/store_val"), open_dataset("shapes:test:200:mix"), cache)
    print(format_table(summary))

Predictions are sigmoid(logits) > 0.5 at the original image size, for the coarse (U-Net) and the refined
(SAM) masks. RES tasks (RefCOCO family, shapes "res") get cIoU, gIoU and P@0.5..0.9 per (dataset, split);
PNG tasks get average recall overall and for things / stuff / singular / plural phrases.
Under torchrun each rank predicts every world-th sample and every rank returns the whole frame (flmm_probe.ranks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from .backbones import Backbone
from .backbones.base import ImageLike, load_image
from .cache import EmbeddingCache
from .data.samples import GroundingDataset, GroundingSample, stored_samples
from .decoder import Grounder
from .metrics import average_recall, intersection_union, res_scores
from .phrases import PhraseLike
from .record import AttentionRecord
from .ranks import gather, join, share
from .store import Store

log = logging.getLogger(__name__)

MASKS = ("coarse", "refined")
RES_TASKS, PNG_TASKS = ("res",), ("png",)
# Okabe & Ito's colour-blind-safe palette (black left out: labels are drawn on it).
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167))


def task_of(sample: GroundingSample) -> str:
    """The sample's task: its "task" attribute (shapes), else "png" for PNG and "res" for the RefCOCO family."""
    attributes = sample.attributes
    return attributes.get("task") or ("png" if attributes.get("dataset") == "png" else "res")


@torch.no_grad()
def predict(
    grounder: Grounder,
    store: Store,
    dataset: GroundingDataset,
    cache: EmbeddingCache | None = None,
    progress: bool = True,
    samples: list[GroundingSample] | None = None,
) -> Iterator[tuple[GroundingSample, int, np.ndarray, np.ndarray | None]]:
    """(sample, phrase_index, coarse mask, refined mask) for every phrase of every dataset sample in `store`.

    Masks are (H, W) bool at the original image size, sigmoid(logits) > 0.5; refined is None for a Grounder
    without refiner. Image embeddings come from `cache` when it has them, else the refiner's frozen encoder
    computes them (nothing is added to the cache). ``samples``: the dataset's good samples to predict (default:
    all of them, ``IncompleteStoreError`` if the store lacks any: see ``data.samples.stored_samples``).
    """
    grounder.eval()
    if samples is None:
        samples = stored_samples(dataset, store.done_ids())[0]
    for sample in tqdm(samples, disable=not progress, desc="predict", unit="sample"):
        embedding, input_size = _embedding(grounder, sample, cache)
        coarse, refined = grounder.ground(store.read(sample.sample_id), embedding, input_size)
        coarse = (coarse > 0).cpu().numpy()  # sigmoid > 0.5
        refined = (refined > 0).cpu().numpy() if refined is not None else None
        for p in range(len(coarse)):
            yield sample, p, coarse[p], refined[p] if refined is not None else None


def _embedding(grounder: Grounder, sample: GroundingSample, cache: EmbeddingCache | None
               ) -> tuple[torch.Tensor | None, tuple[int, int] | None]:
    """The sample image's SAM embedding (C', h', w') and input size, from the cache or computed now."""
    if grounder.refiner is None:
        return None, None
    key = sample.image_key
    if cache is not None and key in cache:
        return cache.get(key).float(), tuple(cache.meta(key)["input_size"])
    embedding, input_size, _ = grounder.refiner.embed(sample.image())
    return embedding[0], input_size


def evaluate(
    grounder: Grounder,
    store: Store,
    dataset: GroundingDataset,
    cache: EmbeddingCache | None = None,
    progress: bool = True,
    partial: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score every phrase of `dataset`'s good samples; returns (per_phrase, summary).

    A store that lacks some of them is refused (``IncompleteStoreError``) unless ``partial``: then the stored
    ones are scored, and summary["coverage"] = {"scored": samples, "in_dataset": good samples} says so.

    per_phrase: one row per phrase, columns sample_id (str), phrase_index (int), dataset, split, task,
        phrase (its text), kind (the dataset's phrase kind where it has one, e.g. the shapes world's
        attribute / relational / superlative expressions, else None), plural, is_thing (bool or None
        where the dataset does not say), target_area (pixels of the true mask: what inter and union would
        both be for a perfect prediction), and for m in coarse, refined:
        inter_m, union_m (pixel counts at the original image size, int) and iou_m (float; an empty
        prediction of an empty mask is 1). Without a refiner inter_refined = union_refined = -1 and
        iou_refined is NaN.
    summary: see `summarize`.
    """
    rows = []
    samples, in_dataset = stored_samples(dataset, store.done_ids(), partial)
    rank, world = join()
    for sample, p, coarse, refined in predict(grounder, store, dataset, cache, progress, share(samples, rank, world)):
        target = sample.mask(p)
        phrase = sample.phrases[p]
        attributes = sample.attributes
        row = {"sample_id": sample.sample_id, "phrase_index": p, "dataset": attributes.get("dataset", dataset.name),
               "split": attributes.get("split", ""), "task": task_of(sample), "phrase": phrase.text,
               "kind": phrase.attributes.get("kind"), "plural": phrase.plural, "is_thing": phrase.is_thing,
               "target_area": int(np.count_nonzero(target))}
        for name, pred in (("coarse", coarse), ("refined", refined)):
            inter, union = intersection_union(pred, target) if pred is not None else (-1, -1)
            row.update({f"inter_{name}": inter, f"union_{name}": union,
                        f"iou_{name}": (inter / union if union > 0 else 1.0) if pred is not None else float("nan")})
        rows.append(row)
    columns = ["sample_id", "phrase_index", "dataset", "split", "task", "phrase", "kind", "plural", "is_thing",
               "target_area", *(f"{c}_{m}" for m in MASKS for c in ("inter", "union", "iou"))]
    order = {s.sample_id: i for i, s in enumerate(samples)}
    per_phrase = pd.concat([pd.DataFrame(part, columns=columns) for part in gather(rows, world)], ignore_index=True)
    per_phrase = per_phrase.sort_values("sample_id", key=lambda c: c.map(order), kind="stable", ignore_index=True)
    return per_phrase, {**summarize(per_phrase), "coverage": {"scored": len(samples), "in_dataset": in_dataset}}


def summarize(per_phrase: pd.DataFrame) -> dict[str, Any]:
    """Scores from `evaluate`'s per-phrase frame, for each mask kind present (coarse, refined):

    {"res": {"<dataset>/<split>": {"coarse": {"cIoU", "gIoU", "P@0.5", ..., "P@0.9", "n"}, "refined": {...}}},
     "png": {"<dataset>/<split>": {"coarse": {"all", "things", "stuff", "singular", "plural", "n"}, ...}}}
    Scores are fractions in [0, 1]; a PNG group with no phrase scores NaN. Tasks other than RES and PNG
    (e.g. shapes "caption") stay in the frame but are not summarised.
    """
    kinds = [m for m in MASKS if f"iou_{m}" in per_phrase and per_phrase[f"iou_{m}"].notna().any()]
    summary: dict[str, Any] = {"res": {}, "png": {}}
    for (name, split), group in per_phrase.groupby(["dataset", "split"], sort=True):
        where = f"{name}/{split}"
        res = group[group["task"].isin(RES_TASKS)]
        if len(res):
            summary["res"][where] = {
                m: {**res_scores(res[f"inter_{m}"].to_numpy(), res[f"union_{m}"].to_numpy()), "n": len(res)} for m in kinds
            }
        png = group[group["task"].isin(PNG_TASKS)]
        if len(png):
            subsets = {"all": np.ones(len(png), bool),
                       "things": (png["is_thing"] == True).to_numpy(),  # noqa: E712 (None is neither)
                       "stuff": (png["is_thing"] == False).to_numpy(),  # noqa: E712
                       "singular": (png["plural"] == False).to_numpy(),  # noqa: E712
                       "plural": (png["plural"] == True).to_numpy()}  # noqa: E712
            summary["png"][where] = {
                m: {**{s: average_recall(png[f"iou_{m}"].to_numpy()[keep]) for s, keep in subsets.items()}, "n": len(png)}
                for m in kinds
            }
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The paper-style tables (percentages, one decimal) of a `summarize` dict, as plain text."""
    lines = []
    coverage = summary.get("coverage")
    if coverage and coverage["scored"] < coverage["in_dataset"]:
        lines += [f"PARTIAL: {coverage['scored']} of the dataset's {coverage['in_dataset']} samples scored", ""]
    res_cols = ["cIoU", "gIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "n"]
    png_cols = ["all", "things", "stuff", "singular", "plural", "n"]
    for task, cols, title in (("res", res_cols, "RES"), ("png", png_cols, "PNG average recall")):
        if not summary.get(task):
            continue
        lines.append(f"{title}")
        header = f"{'split':<24} {'mask':<8} " + " ".join(f"{c:>8}" for c in cols)
        lines += [header, "-" * len(header)]
        for where, by_mask in summary[task].items():
            for mask, scores in by_mask.items():
                cells = [f"{scores[c]:>8d}" if c == "n" else f"{100 * scores[c]:>8.1f}" for c in cols]
                lines.append(f"{where:<24} {mask:<8} " + " ".join(cells))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n" if lines else "(nothing to score)\n"


@torch.no_grad()
def segment(
    backbone: Backbone,
    grounder: Grounder,
    image: ImageLike,
    text: str,
    phrases: Sequence[PhraseLike],
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
    """Ground `phrases` of `text` in one image with a live backbone; returns (masks, coarse, refined).

    image: PIL, (H, W, 3) uint8 RGB array or path. phrases: strings of `text` or (start, end) char spans.
    masks: (n, H, W) bool, sigmoid > 0.5 of the refined logits (of the coarse ones without a refiner).
    coarse, refined: (n, H, W) float logits at the original image size; refined is None without a refiner.
    The text is recorded as the assistant's answer with the grounder's pooling, as the store was.
    """
    _, coarse, refined = ground(backbone, grounder, image, text, phrases)
    masks = ((refined if refined is not None else coarse) > 0).numpy()
    return masks, coarse, refined


@torch.no_grad()
def ground(
    backbone: Backbone,
    grounder: Grounder,
    image: ImageLike,
    text: str,
    phrases: Sequence[PhraseLike],
) -> tuple[AttentionRecord, torch.Tensor, torch.Tensor | None]:
    """`segment`'s two steps, keeping the record: (record, coarse, refined), the logits on the CPU."""
    pil = load_image(image)
    grounder.eval()
    use_text = grounder.refiner is not None and grounder.refiner.use_text
    record = backbone.record(pil, text, phrases, pooling=grounder.pooling, hidden_states=use_text)
    embedding, input_size = None, None
    if grounder.refiner is not None:
        embedding, input_size, _ = grounder.refiner.embed(pil)
    coarse, refined = grounder.ground(record, embedding, input_size)
    return record, coarse.cpu(), refined.cpu() if refined is not None else None


def overlay(
    image: ImageLike, masks: np.ndarray, phrases: Sequence[str], alpha: float = 0.5, min_side: int = 480
) -> Image.Image:
    """The image with each (H, W) bool mask of `masks` (n, H, W) tinted in its own colour-blind-safe colour,
    outlined, and labelled with its phrase at its top-left corner (in the top-left corner of the image,
    marked "(no mask)", when the mask is empty). Returns an RGB PIL image of the image's size, enlarged by
    an integer factor (nearest neighbour) until its short side reaches `min_side`, so that labels stay
    readable on small images."""
    base = load_image(image)
    masks = np.asarray(masks, bool)
    if masks.shape[1:] != (base.height, base.width) or len(masks) != len(phrases):
        raise ValueError(f"Need one (H, W) = {(base.height, base.width)} mask per phrase, got {masks.shape} "
                         f"for {len(phrases)} phrases.")
    scale = max(1, -(-min_side // min(base.height, base.width)))
    masks = masks.repeat(scale, axis=1).repeat(scale, axis=2)
    out = np.asarray(base, np.float32).repeat(scale, axis=0).repeat(scale, axis=1)
    for i, mask in enumerate(masks):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array(PALETTE[i % len(PALETTE)], np.float32)
        # outline: mask pixels with a 4-neighbour outside the mask
        padded = np.pad(mask, 1)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        out[mask & ~inner] = PALETTE[i % len(PALETTE)]
    result = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(result)
    font = ImageFont.load_default(size=max(11, min(result.size) // 32))
    empty_row = 0
    for i, (mask, phrase) in enumerate(zip(masks, phrases)):
        ys, xs = np.nonzero(mask)
        if len(xs):
            xy, label = (int(xs.min()), int(ys.min())), phrase
        else:
            xy, label = (0, empty_row), f"{phrase} (no mask)"
        left, top, right, bottom = draw.textbbox(xy, label, font=font)
        shift = min(max(0, right - result.width), left)  # keep the label inside the image where it fits
        xy, left, right = (xy[0] - shift, xy[1]), left - shift, right - shift
        if not len(xs):
            empty_row = bottom + 1
        draw.rectangle((left, top, right, bottom), fill=PALETTE[i % len(PALETTE)])
        draw.text(xy, label, fill=(0, 0, 0), font=font)
    return result
