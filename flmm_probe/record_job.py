"""Record a dataset into a Store, once per sample.

The job resumes: samples already in the store are skipped, so a killed job rerun with the same arguments
ends with the same store. With `world_size` > 1 each rank takes every
world_size-th sample and writes its own shards (torchrun / accelerate set RANK and WORLD_SIZE).
Bad samples (missing or unreadable image, empty mask, a phrase the tokenizer loses) are logged and
counted in the report, and every good sample is kept.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .backbones import Backbone
from .data.samples import GroundingDataset, GroundingSample
from .phrases import PhraseError
from .store import Store

log = logging.getLogger(__name__)


@dataclass
class RecordReport:
    """What a recording job did: samples recorded, skipped as already stored, and bad (by kind)."""

    recorded: int = 0
    already_stored: int = 0
    bad: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {"recorded": self.recorded, "already_stored": self.already_stored, "bad": dict(self.bad)}


def _rank_samples(dataset: GroundingDataset, rank: int, world_size: int) -> Iterator[GroundingSample]:
    for i, sample in enumerate(dataset):
        if i % world_size == rank:
            yield sample


def _phrase_columns(sample: GroundingSample) -> list[dict[str, object]]:
    return [{"plural": p.plural, "is_thing": p.is_thing} for p in sample.phrases]


def _sample_columns(sample: GroundingSample) -> dict[str, object]:
    keep = (str, int, float, bool)
    return {f"sample_{k}": v for k, v in sample.attributes.items() if isinstance(v, keep)}


def record_dataset(
    backbone: Backbone,
    dataset: GroundingDataset,
    store: Store,
    batch_size: int = 1,
    rank: int = 0,
    world_size: int = 1,
    shard_size: int = 64,
    progress: bool = True,
    pooling: str = "mean",
) -> RecordReport:
    """Record every good sample of `dataset` not yet in `store`. Returns the job's report.

    Manifest extras: sample_<attribute> for the sample's scalar attributes (dataset, split, task...), and
    per phrase plural and is_thing. pooling: how each phrase's tokens are merged (``phrases.pool``).
    """
    report = RecordReport()
    done = store.done_ids()
    pending: list[GroundingSample] = []

    def flush(writer) -> None:
        for sample, record in _record_robustly(backbone, pending, report, pooling):
            writer.add(sample.sample_id, record, _sample_columns(sample), _phrase_columns(sample))
            report.recorded += 1
        pending.clear()

    with store.writer(rank=rank, shard_size=shard_size) as writer:
        samples = tqdm(_rank_samples(dataset, rank, world_size), disable=not progress, desc=f"record rank {rank}", unit="sample")
        for sample in samples:
            if sample.sample_id in done:
                report.already_stored += 1
                continue
            pending.append(sample)
            if len(pending) == batch_size:
                flush(writer)
        flush(writer)
    report.bad.update(b.kind for b in dataset.bad)
    log.info("record: %s", report.as_dict())
    return report


def _record_robustly(backbone: Backbone, samples: list[GroundingSample], report: RecordReport, pooling: str):
    """(sample, record) for each sample; a batch with a lost phrase is retried one sample at a time."""
    if not samples:
        return []
    try:
        records = backbone.record_batch([(s.image(), s.text, s.spans) for s in samples], batch_size=len(samples),
                                        pooling=pooling)
        return list(zip(samples, records))
    except PhraseError:
        if len(samples) > 1:
            return [pair for s in samples for pair in _record_robustly(backbone, [s], report, pooling)]
        log.warning("record: skipping %s: a phrase maps to no token", samples[0].sample_id, exc_info=True)
        report.bad["phrase lost by the tokenizer"] += 1
        return []
