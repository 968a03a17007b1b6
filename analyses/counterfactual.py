"""Do a backbone's phrase maps follow the phrases' words, or their place in the text?

A grounding score cannot tell a head that finds the object a phrase names from one that finds the object
at the phrase's place in a list, when texts list objects in a fixed spatial order (left to right, say).
This analysis breaks the tie. Each sample's text is rewritten with its phrases in a permuted order (each
phrase's words moved into another phrase's slot, the words between the slots unchanged), and both texts
are recorded on the same image. For every phrase that the permutation moved, per layer and head, the
pointing game is scored against:

- ``named``: the mask of what the phrase names (its own mask);
- ``slot``: the mask of the phrase that held its slot in the original text (what its *position* would pick
  if the model had learned the original text's order);
- ``rank``: the mask whose left-to-right rank among the sample's phrases equals the slot's index (what a
  left-to-right layout convention would pick);

and ``named - slot``, the per-phrase difference. The original text's ``named`` is scored too: a head
that follows words scores the same on both texts. Intervals are cluster-bootstrap percentiles (clusters:
samples), as in ``analyses.emergence``.

    frame, skipped = counterfactual_frame(backbone, dataset)
    table = counterfactual_table(frame)   # layer head metric estimate low high n
    line = summary_line(table)

A phrase is permuted only where that means something: phrases that name things (``is_thing`` not False),
whose spans do not overlap, whose text and mask no other phrase of the sample repeats. A sample with fewer
than two such phrases is skipped, and every skipped sample or phrase is counted by reason in ``skipped``,
never mixed in.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from flmm_probe.data.samples import GroundingSample
from flmm_probe.metrics import mask_to_grid, pointing_game

from .emergence import bootstrap_mean
from .score import MEAN_HEAD, record_maps

log = logging.getLogger(__name__)

METRICS = ("named", "slot", "rank", "named_minus_slot")
ORDERS = ("original", "permuted")


@dataclass(frozen=True)
class Permutation:
    """A sample's text with some of its phrases moved.

    ``text``: the permuted text; ``spans``: (start, end) of every moved-or-kept phrase in it, in the order of
    ``phrases`` (indices into the sample's phrases); ``slots``: for each of them, the index (into the sample's
    phrases) of the phrase whose slot it now fills. A phrase with ``slots[k] != phrases[k]`` was displaced.
    """

    text: str
    phrases: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    slots: tuple[int, ...]


def permutable(sample: GroundingSample) -> tuple[list[int], Counter]:
    """Indices of the sample's phrases that a permutation may move, and the count of the others by reason."""
    reasons: Counter = Counter()
    masks = sample.masks()
    texts = [p.text for p in sample.phrases]
    keep = []
    for i, phrase in enumerate(sample.phrases):
        if phrase.is_thing is False:
            reasons["phrase names stuff"] += 1
        elif texts.count(phrase.text) > 1:
            reasons["phrase text repeated"] += 1
        elif any(j != i and np.array_equal(masks[i], masks[j]) for j in range(len(texts))):
            reasons["mask shared with another phrase"] += 1
        elif any(j != i and phrase.start < q.end and q.start < phrase.end for j, q in enumerate(sample.phrases)):
            reasons["spans overlap"] += 1
        else:
            keep.append(i)
    return keep, reasons


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` that moves every element (n >= 2)."""
    if n < 2:
        raise ValueError(f"a derangement moves every element: it needs at least two, got {n}")
    while True:
        order = rng.permutation(n)
        if (order != np.arange(n)).all():
            return order


def permute(sample: GroundingSample, movable: Sequence[int], order: Sequence[int]) -> Permutation:
    """``sample``'s text with the phrase ``movable[order[k]]`` in the slot of ``movable[k]`` (slots in text order)."""
    slots = sorted(movable, key=lambda i: sample.phrases[i].start)
    fillers = [slots[k] for k in order]
    text, spans, cursor = "", [], 0
    for slot, filler in zip(slots, fillers):
        text += sample.text[cursor : sample.phrases[slot].start]
        words = sample.phrases[filler].text
        spans.append((len(text), len(text) + len(words)))
        text += words
        cursor = sample.phrases[slot].end
    text += sample.text[cursor:]
    return Permutation(text, tuple(fillers), tuple(spans), tuple(slots))


def _rank_masks(masks: np.ndarray, slots: Sequence[int]) -> list[int]:
    """For the k-th slot in text order, the phrase whose mask's centroid is k-th from the left."""
    centroid = [np.nonzero(masks[i])[1].mean() for i in slots]
    by_x = [slots[k] for k in np.argsort(centroid, kind="stable")]
    return by_x


def _pointing(maps: torch.Tensor, mask: np.ndarray) -> np.ndarray:
    """(layer, head) pointing game of one phrase's (layer, head, y, x) maps against ``mask``."""
    return pointing_game(maps, mask_to_grid(mask, tuple(maps.shape[-2:]))).numpy()


def _rows(sample_id: str, phrase: int, order: str, displaced: bool, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    layers, heads = next(iter(scores.values())).shape
    layer, head = np.meshgrid(np.arange(layers), np.arange(heads), indexing="ij")
    head = np.where(head == heads - 1, MEAN_HEAD, head)  # the last column is the head-averaged map
    parts = [pd.DataFrame({"sample": sample_id, "phrase": phrase, "order": order, "displaced": displaced,
                           "layer": layer.ravel(), "head": head.ravel(), "metric": metric, "value": v.ravel()})
             for metric, v in scores.items()]
    return pd.concat(parts, ignore_index=True)


def counterfactual_frame(backbone, samples: Iterable[GroundingSample], seed: int = 0, kind: str = "fused",
                         batch_size: int = 8, progress: bool = False) -> tuple[pd.DataFrame, Counter]:
    """Record every usable sample with its phrases in the original and in a deranged order, and score them.

    ``backbone``: a ``flmm_probe.Backbone`` (any family). Returns the long frame (sample phrase order displaced
    layer head metric value; ``head`` -1 is the layer's head-averaged map) and the count of skipped samples
    and phrases by reason. ``seed`` draws the derangements (one per sample).
    """
    rng = np.random.default_rng(seed)
    skipped: Counter = Counter()
    jobs = []
    for sample in samples:
        movable, reasons = permutable(sample)
        if len(sample.phrases) < 2:
            skipped["sample: one phrase"] += 1
            continue
        if len(movable) < 2:
            skipped[f"sample: fewer than two permutable phrases ({', '.join(sorted(reasons))})"] += 1
            continue
        skipped.update({f"phrase: {k}": v for k, v in reasons.items()})
        permutation = permute(sample, movable, derangement(len(movable), rng))
        if permutation.text == sample.text:
            skipped["sample: permutation leaves the text unchanged"] += 1
            continue
        jobs.append((sample, movable, permutation))
    if not jobs:
        raise ValueError("No sample has two phrases that can trade places (distinct texts and masks, things, not "
                         f"overlapping); skipped: {dict(skipped)}.")
    inputs = []
    for sample, movable, permutation in jobs:
        image = sample.image()
        inputs.append((image, sample.text, [(sample.phrases[i].start, sample.phrases[i].end) for i in movable]))
        inputs.append((image, permutation.text, list(permutation.spans)))
    records = backbone.record_batch(inputs, batch_size=batch_size, hidden_states=False, progress=progress)
    frames = []
    for k, (sample, movable, permutation) in enumerate(jobs):
        masks = sample.masks()
        by_x = _rank_masks(masks, permutation.slots)
        for order, record, phrases, slots in (("original", records[2 * k], movable, movable),
                                             ("permuted", records[2 * k + 1], permutation.phrases, permutation.slots)):
            maps = record_maps(record, kind)  # (phrase, layer, head, y, x)
            maps = torch.cat([maps, maps.mean(2, keepdim=True)], dim=2)
            slot_index = {slot: s for s, slot in enumerate(sorted(slots, key=lambda i: sample.phrases[i].start))}
            for p, (phrase, slot) in enumerate(zip(phrases, slots)):
                named = _pointing(maps[p], masks[phrase])
                scores = {"named": named, "rank": _pointing(maps[p], masks[by_x[slot_index[slot]]])}
                if order == "permuted":
                    scores["slot"] = _pointing(maps[p], masks[slot])
                    scores["named_minus_slot"] = named - scores["slot"]
                frames.append(_rows(sample.sample_id, phrase, order, phrase != slot, scores))
    frame = pd.concat(frames, ignore_index=True)
    frame["metric"] = frame["metric"].astype(pd.CategoricalDtype(METRICS))
    return frame, skipped


def counterfactual_table(frame: pd.DataFrame, **bootstrap: object) -> pd.DataFrame:
    """Per order, metric, layer and head: estimate low high n (``analyses.emergence.bootstrap_mean``).

    Rows of the permuted text count only its displaced phrases; the original text's rows are its ``named``
    and ``rank`` scores of the same phrases.
    """
    rows = frame[(frame["order"] == "original") | frame["displaced"]]
    return bootstrap_mean(rows, ["order", "metric", "layer", "head"], **bootstrap)


def best_head(table: pd.DataFrame) -> tuple[int, int]:
    """The (layer, head) that points at the named object most often in the permuted texts (heads, not means)."""
    named = table[(table["order"] == "permuted") & (table["metric"] == "named") & (table["head"] != MEAN_HEAD)]
    row = named.loc[named["estimate"].idxmax()]
    return int(row["layer"]), int(row["head"])


def head_summary(table: pd.DataFrame, layer: int, head: int) -> dict[str, tuple[float, float, float]]:
    """{"<order>/<metric>": (estimate, low, high)} of one head."""
    rows = table[(table["layer"] == layer) & (table["head"] == head)]
    return {f"{r.order}/{r.metric}": (float(r.estimate), float(r.low), float(r.high)) for r in rows.itertuples()}


def summary_line(table: pd.DataFrame, frame: pd.DataFrame, head: tuple[int, int] | None = None) -> str:
    """One line: the head's pointing at the named and the slot's object, in permuted texts, with 95% CIs.

    ``head``: the (layer, head) to report (default ``best_head``, chosen on these same phrases: its interval
    does not cover the choice).
    """
    layer, h = best_head(table) if head is None else head
    s = head_summary(table, layer, h)
    moved = frame[(frame["order"] == "permuted") & frame["displaced"]]
    n_phrases = moved[["sample", "phrase"]].drop_duplicates().shape[0]

    def ci(key: str) -> str:
        est, low, high = s[key]
        return f"{est:.2f} [{low:.2f}, {high:.2f}]"

    return (f"Words or position: with the phrases of {moved['sample'].nunique()} samples permuted ({n_phrases} moved "
            f"phrases), L{layer}H{h} points at the object the phrase names {ci('permuted/named')} (original order "
            f"{ci('original/named')}), at the object its slot held {ci('permuted/slot')}; named - slot "
            f"{ci('permuted/named_minus_slot')}")


def run(backbone, samples: Iterable[GroundingSample], out: str | Path, seed: int = 0, batch_size: int = 8,
        progress: bool = True) -> tuple[pd.DataFrame, Counter]:
    """Write ``counterfactual.parquet`` (the frame) and ``counterfactual_table.parquet`` into ``out``; returns the
    table and the skipped counts (also logged)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame, skipped = counterfactual_frame(backbone, samples, seed=seed, batch_size=batch_size, progress=progress)
    table = counterfactual_table(frame)
    frame.to_parquet(out / "counterfactual.parquet")
    table.to_parquet(out / "counterfactual_table.parquet")
    for reason, n in sorted(skipped.items()):
        log.warning("counterfactual: skipped %d (%s)", n, reason)
    return table, skipped

