"""Analyse a recorded store against its dataset's masks: the files that figures/ renders.

    flmm-probe analyze --store runs/x/store --data shapes:test:200 --out runs/x

Writes into the output folder (never re-running the LMM: records come from the store):
    scores.parquet              sample phrase layer head metric value + phrase attributes (plural, is_thing,
                                task, kind: analyses.score)
    baselines.parquet           sample phrase baseline metric value (uniform map, centre prior)
    heads.parquet               localization heads: layer head image_mass passes_mass low_entropy_share selected
    head_table.parquet          layer head estimate low high n rank, for the pointing game
    coverage.json               samples scored, of the dataset's good samples (fewer only with --partial)

Under torchrun each rank scores every world-th sample; the pieces are gathered (flmm_probe.ranks) into the
same tables one process writes, and rank 0 writes them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from flmm_probe import ranks
from flmm_probe.data.samples import GroundingDataset, GroundingSample, stored_samples
from flmm_probe.record import AttentionRecord
from flmm_probe.store import Store

from .emergence import head_table
from .heads import localization_heads
from .score import ScoredSample, baseline_frame, score_records

log = logging.getLogger(__name__)

COVERAGE = "coverage.json"


class StoredRecords:
    """A re-iterable view of a store's records for chosen sample ids, read from disk on each pass."""

    def __init__(self, store: Store, sample_ids: list[str]):
        self.store, self.sample_ids = store, sample_ids

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __iter__(self) -> Iterator[AttentionRecord]:
        return (self.store.read(sample_id) for sample_id in self.sample_ids)


def scored_samples(store: Store, dataset: GroundingDataset, partial: bool = True) -> Iterator[ScoredSample]:
    """The dataset's good samples that the store holds, with their masks and phrase attributes.

    ``partial=False``: raise ``IncompleteStoreError`` if the store lacks any of them (``stored_samples``).
    """
    for sample in stored_samples(dataset, store.done_ids(), partial)[0]:
        yield _scored(store, sample)


def _scored(store: Store, sample: GroundingSample) -> ScoredSample:
    attributes = [{"plural": p.plural, "is_thing": p.is_thing, "task": sample.attributes.get("task"),
                   "kind": p.attributes.get("kind")} for p in sample.phrases]
    return ScoredSample(sample.sample_id, store.read(sample.sample_id), list(sample.masks()), attributes)


def analyze(store: Store, dataset: GroundingDataset, out: str | Path, sinks: bool = False, progress: bool = True,
            partial: bool = False) -> dict[str, Path]:
    """Score every stored sample of `dataset`, rank heads, and write the parquet files listed above, and
    coverage.json: {"scored": samples scored, "in_dataset": the dataset's good samples}.

    A store that lacks some of the dataset's good samples is refused (``IncompleteStoreError``) unless
    ``partial``; then coverage.json says how many were scored.
    """
    out = Path(out)
    samples, in_dataset = stored_samples(dataset, store.done_ids(), partial)
    if not samples:
        raise ValueError(f"The store at {store.root} holds none of the dataset's samples; record them first.")
    extra = len(store.done_ids()) - len(samples)
    if extra:
        log.info("analyze: %d stored samples are not in this dataset and are left out", extra)
    rank, world = ranks.join()
    order = {s.sample_id: i for i, s in enumerate(samples)}
    mine = [_scored(store, s) for s in ranks.share(samples, rank, world)]

    def whole(frame: pd.DataFrame) -> pd.DataFrame:
        """Every rank's rows in the dataset's sample order, as one process makes them."""
        frame = pd.concat(ranks.gather(frame, world), ignore_index=True)
        return frame.sort_values("sample", key=lambda c: c.map(order), kind="stable", ignore_index=True)

    frames = {
        "scores": whole(score_records(mine, sinks=sinks, progress=progress)),
        "baselines": whole(baseline_frame(mine)),
        "heads": localization_heads(StoredRecords(store, [s.sample_id for s in mine]), total=lambda a: ranks.total(a, world)),
    }
    frames["head_table"] = head_table(frames["scores"], "pointing")
    paths = {name: out / f"{name}.parquet" for name in frames}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / COVERAGE).write_text(json.dumps({"scored": len(samples), "in_dataset": in_dataset}))
        for name, frame in frames.items():
            frame.to_parquet(paths[name])
    return paths


def load(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The parquet files of an analysed run folder that exist, by name."""
    run_dir = Path(run_dir)
    return {p.stem: pd.read_parquet(p) for p in sorted(run_dir.glob("*.parquet"))}
