"""Which heads ground: localization heads (Kang et al., CVPR 2025) and attention sinks.

Localization heads are selected in two steps, as Kang et al. do:
  1. image-attention mass: each head's attention mass on the image tokens, averaged over phrases; the
     heads above the elbow of the sorted curve attend to the image at all;
  2. spatial entropy: each map is binarised at its mean, its 8-connected components are found, and the
     entropy of their size distribution is taken (one compact blob = 0); among the heads kept by step 1,
     the heads that most often rank among the `top` lowest-entropy heads of a phrase are selected.

Attention sinks are image tokens with high-norm keys: they draw attention whatever the phrase says.
`sink_cells` finds them from a record's key norms, and `drop_sinks` removes them from maps before scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage

from flmm_probe.record import AttentionRecord

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def elbow(values: np.ndarray) -> int:
    """Number of values kept by the elbow of a curve sorted descending.

    The elbow is the point farthest below the chord joining the curve's first and last points (the
    Kneedle criterion for a falling, convex curve): the first value after the drop. Values before it
    are kept.
    """
    values = np.sort(np.asarray(values, float))[::-1]
    if len(values) < 3:
        return len(values)
    x = np.linspace(0, 1, len(values))
    span = values[0] - values[-1]
    y = (values - values[-1]) / span if span > 0 else np.zeros_like(values)
    below_chord = (1 - x) - y  # the chord runs from (0, 1) to (1, 0)
    return max(1, int(np.argmax(below_chord)))


def spatial_entropy(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """Entropy of the connected-component sizes of each map binarised at its mean, (...).

    maps: (..., y, x). One compact blob scores 0; attention scattered over many islands scores high.
    """
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(-1, *maps.shape[-2:])
    out = np.empty(len(flat))
    for i, m in enumerate(flat):
        labels, count = ndimage.label(m > m.mean(), structure=_EIGHT_CONNECTED)
        if count == 0:
            out[i] = 0.0
            continue
        sizes = np.bincount(labels.ravel())[1:].astype(float)
        p = sizes / sizes.sum()
        out[i] = float(-(p * np.log(p)).sum())
    return out.reshape(maps.shape[:-2])


def localization_heads(
    records: Iterable[AttentionRecord], top: int = 10, select: int = 10, kind: str = "fused",
    total: Callable[[np.ndarray], np.ndarray] = np.asarray,
) -> pd.DataFrame:
    """Rank heads as localization heads over `records` (iterated twice: a list, or a re-iterable view
    of a store such as analyses.run.StoredRecords, which then streams from disk).

    total: sums an array over the processes that share the records (``flmm_probe.ranks.total`` under
    torchrun, each rank holding its share); the default, one process, keeps it as it is.

    Returns one row per (layer, head): image_mass (mean over phrases), passes_mass (above the elbow),
    low_entropy_share (share of phrases for which the head is among the `top` lowest-entropy heads of
    those passing step 1), selected (the `select` heads with the highest share), sorted by that share.
    """
    mass_sum, n_phrases = None, 0
    for record in records:
        if record.image_mass is None:
            raise ValueError("Records without image_mass: re-record them with this version of flmm_probe.")
        mass_sum = record.image_mass.sum(0) + (0 if mass_sum is None else mass_sum)  # (layer, head)
        n_phrases += len(record.phrases)
    if mass_sum is None:
        raise ValueError("No records given.")
    mass_sum, n_phrases = total(mass_sum.numpy()), int(total(np.array(n_phrases)))
    layers, heads = mass_sum.shape
    mass = mass_sum / n_phrases
    order = np.argsort(-mass, axis=None)
    passes = np.zeros(layers * heads, bool)
    passes[order[: elbow(mass.ravel())]] = True
    counts = np.zeros(layers * heads)
    for record in records:
        maps = record.fused() if kind == "fused" else record.maps[kind]
        entropy = spatial_entropy(maps).reshape(len(maps), -1)  # (phrase, layer*head)
        entropy[:, ~passes] = np.inf
        lowest = np.argsort(entropy, axis=1)[:, : min(top, int(passes.sum()))]
        np.add.at(counts, lowest.ravel(), 1)
    counts = total(counts)
    layer, head = np.divmod(np.arange(layers * heads), heads)
    table = pd.DataFrame(
        {
            "layer": layer,
            "head": head,
            "image_mass": mass.ravel(),
            "passes_mass": passes,
            "low_entropy_share": counts / n_phrases,
        }
    ).sort_values(["low_entropy_share", "image_mass"], ascending=False, ignore_index=True)
    table["selected"] = table.index < select
    return table


def sink_cells(record: AttentionRecord, kind: str = "fused", ratio: float = 5.0) -> torch.Tensor:
    """Attention-sink cells: (layer, head, y, x) bool, where the key norm is >= `ratio` x the median
    key norm of that layer and kv head (the high-norm keys of Darcet et al. and Sun et al.).

    Query heads read their kv head's keys (GQA), so each query head inherits its kv head's sinks.
    kind "fused" marks a cell of the fused grid if any view kind has a sink there.
    """
    if kind == "fused":
        size = tuple(record.fused().shape[-2:])
        kinds = [_sinks_of_kind(record, k, ratio).float() for k in record.maps]
        return torch.stack([F.interpolate(s, size=size, mode="nearest") for s in kinds]).amax(0).bool()
    return _sinks_of_kind(record, kind, ratio)


def _sinks_of_kind(record: AttentionRecord, kind: str, ratio: float) -> torch.Tensor:
    if kind not in record.key_norms:
        raise ValueError(f"Record has no key norms for view kind {kind!r}: re-record it with this version.")
    norms = record.key_norms[kind]  # (layer, kv_head, y, x)
    covered = norms > 0  # cells outside every view (a centre crop) hold no key
    medians = [n[c].median() if c.any() else n.new_tensor(0.0) for n, c in zip(norms.flatten(0, 1), covered.flatten(0, 1))]
    threshold = ratio * torch.stack(medians).reshape(norms.shape[:2])[..., None, None]
    group = record.num_heads // norms.shape[1]
    return ((norms >= threshold) & covered).repeat_interleave(group, dim=1)


def drop_sinks(maps: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Maps (phrase, layer, head, y, x) with sink cells (layer, head, y, x) set to 0."""
    if maps.shape[-2:] != sinks.shape[-2:]:
        raise ValueError(f"Sink grid {tuple(sinks.shape[-2:])} differs from the maps' {tuple(maps.shape[-2:])}.")
    return maps.masked_fill(sinks[None], 0.0)
