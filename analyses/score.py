"""Score every layer's and head's map of every phrase against its mask: one tidy DataFrame.

    frame = score_records(samples)          # samples: iterable of ScoredSample
    frame.columns: sample phrase layer head metric value [+ phrase attributes]

`head` is the head index, or -1 for the layer's head-averaged map. Baseline maps (uniform, centre prior)
are scored the same way by `baseline_frame`, with `layer` and `head` set to -1 and a `baseline` column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from flmm_probe.metrics import MAP_METRICS, map_scores, mask_to_grid
from flmm_probe.record import AttentionRecord

from .heads import drop_sinks, sink_cells

MEAN_HEAD = -1  # `head` value of a layer's head-averaged map


@dataclass
class ScoredSample:
    """One record with a ground-truth mask per phrase.

    masks: per phrase, (H, W) bool at the original image size.
    attributes: per phrase, a dict of columns to carry into the frame (e.g. plural, is_thing, kind).
    """

    sample_id: str
    record: AttentionRecord
    masks: Sequence[np.ndarray]
    attributes: Sequence[dict[str, Any]] = field(default_factory=list)


def record_maps(record: AttentionRecord, kind: str = "fused") -> torch.Tensor:
    """(phrase, layer, head, y, x) maps of a record: "fused" (all view kinds averaged) or one kind."""
    return record.fused() if kind == "fused" else record.maps[kind]


def centre_prior(size: tuple[int, int], sigma: float = 0.25) -> torch.Tensor:
    """(Y, X) isotropic Gaussian at the image centre, sigma as a share of each side."""
    ys = (torch.arange(size[0]) + 0.5) / size[0] - 0.5
    xs = (torch.arange(size[1]) + 0.5) / size[1] - 0.5
    return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))


def _long_frame(values: dict[str, torch.Tensor], index: dict[str, np.ndarray], attributes: dict[str, np.ndarray]) -> pd.DataFrame:
    """Stack {metric: (n,)} scores sharing the columns {name: (n,)} into long format:
    index columns, metric, value, attribute columns."""
    n = next(iter(values.values())).numel()
    parts = []
    for metric, v in values.items():
        part = dict(index)
        part["metric"] = np.full(n, metric)
        part["value"] = v.reshape(-1).numpy()
        part.update(attributes)
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)


def _attribute_columns(sample: ScoredSample, phrase_index: np.ndarray) -> dict[str, np.ndarray]:
    if not sample.attributes:
        return {}
    keys = list(dict.fromkeys(k for a in sample.attributes for k in a))
    return {k: np.array([sample.attributes[i].get(k) for i in phrase_index], dtype=object) for k in keys}


def score_sample(sample: ScoredSample, kind: str = "fused", mean_head: bool = True, sinks: bool = False) -> pd.DataFrame:
    """Long-format scores of every (phrase, layer, head) map of one sample, plus each layer's mean map.

    sinks: zero the attention-sink cells (analyses.heads.sink_cells) of every map before scoring.
    """
    maps = record_maps(sample.record, kind)  # (phrase, layer, head, y, x)
    if sinks:
        maps = drop_sinks(maps, sink_cells(sample.record, kind))
    if len(sample.masks) != maps.shape[0]:
        raise ValueError(f"Sample {sample.sample_id}: {maps.shape[0]} phrases but {len(sample.masks)} masks.")
    if mean_head:
        maps = torch.cat([maps, maps.mean(2, keepdim=True)], dim=2)
    cover = torch.stack([mask_to_grid(m, maps.shape[-2:]) for m in sample.masks])[:, None, None]
    scores = map_scores(maps, cover)
    phrases, layers, heads = maps.shape[:3]
    p, l, h = np.meshgrid(np.arange(phrases), np.arange(layers), np.arange(heads), indexing="ij")
    head_ids = h.reshape(-1)
    if mean_head:
        head_ids = np.where(head_ids == heads - 1, MEAN_HEAD, head_ids)
    index = {
        "sample": np.full(p.size, sample.sample_id, dtype=object),
        "phrase": p.reshape(-1),
        "layer": l.reshape(-1),
        "head": head_ids,
    }
    return _long_frame(scores, index, _attribute_columns(sample, p.reshape(-1)))


def score_records(
    samples: Iterable[ScoredSample], kind: str = "fused", mean_head: bool = True, sinks: bool = False, progress: bool = False
) -> pd.DataFrame:
    """Tidy scores of every sample: columns sample phrase layer head metric value [+ attributes]."""
    frames = [score_sample(s, kind, mean_head, sinks) for s in tqdm(samples, disable=not progress, desc="score", unit="sample")]
    frame = pd.concat(frames, ignore_index=True)
    frame["metric"] = frame["metric"].astype(pd.CategoricalDtype(MAP_METRICS))
    return frame


def baseline_frame(samples: Iterable[ScoredSample], kind: str = "fused") -> pd.DataFrame:
    """Scores of map-free baselines on the same phrases: a uniform map and a centre prior.

    Columns: sample phrase baseline metric value [+ attributes]. (The third baseline, a head picked at
    random, is the mean over heads of `score_records`' frame: see analyses.emergence.)
    """
    frames = []
    for sample in samples:
        size = tuple(record_maps(sample.record, kind).shape[-2:])
        cover = torch.stack([mask_to_grid(m, size) for m in sample.masks])
        for name, prior in (("uniform", torch.ones(size)), ("centre", centre_prior(size))):
            scores = map_scores(prior.expand_as(cover), cover)
            phrase = np.arange(len(sample.masks))
            index = {"sample": np.full(len(phrase), sample.sample_id, dtype=object), "phrase": phrase}
            index["baseline"] = np.full(len(phrase), name)
            frames.append(_long_frame(scores, index, _attribute_columns(sample, phrase)))
    return pd.concat(frames, ignore_index=True)
