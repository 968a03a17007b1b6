"""Helper for tests/test_store.py: synthetic records and a recording job, run in-process or as a child."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from flmm_probe.record import AttentionRecord
from flmm_probe.store import Store

CONFIG = {"model": "synthetic", "pooling": "mean"}
NUM_SAMPLES = 12
LAYERS, HEADS, DIM = 3, 2, 8


def sample_id(i: int) -> str:
    return f"img{i:03d}"


def job_order(n: int = NUM_SAMPLES) -> list[int]:
    """A fixed shuffle, so that the recording order differs from the manifest's sample-id order."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()


def synthetic_record(i: int) -> AttentionRecord:
    """Sample i: 1-3 phrases, a "global" (phrase, layer, head, 6, 6) map, "tiles" on even i, hidden states,
    image mass and key norms."""
    g = torch.Generator().manual_seed(i)
    words = ["red square", "blue circle", "green triangle"][: 1 + i % 3]
    text = f"sample {i}: " + " and ".join(words)
    spans = [(text.index(w), text.index(w) + len(w)) for w in words]
    maps = {"global": torch.rand(len(words), LAYERS, HEADS, 6, 6, generator=g).softmax(-1)}
    if i % 2 == 0:
        maps["tiles"] = torch.rand(len(words), LAYERS, HEADS, 12, 12, generator=g)
    hidden = [torch.randn(len(w.split()), LAYERS + 1, DIM, generator=g) * 3 for w in words]
    mass = torch.rand(len(words), LAYERS, HEADS, generator=g)
    norms = {kind: torch.rand(LAYERS, 2, *m.shape[-2:], generator=g) * 10 for kind, m in maps.items()}
    return AttentionRecord(text=text, phrases=words, spans=spans, maps=maps, image_size=(48, 64 + i),
                           hidden=hidden, image_mass=mass, key_norms=norms, meta={"index": i})


def record_job(root: Path, indices: list[int], rank: int = 0, shard_size: int = 2, delay: float = 0.0) -> Store:
    """What a recording script does: open or create the store, skip what is done, record the rest."""
    store = Store.create(root, CONFIG, exist_ok=True)
    done = store.done_ids()
    with store.writer(rank=rank, shard_size=shard_size) as w:
        for i in indices:
            if sample_id(i) in done:
                continue
            record = synthetic_record(i)
            phrase_extra = [{"mask_ref": f"masks/{i}_{p}.png"} for p in range(len(record.phrases))]
            w.add(sample_id(i), record, extra={"split": "val" if i % 4 == 0 else "train"}, phrase_extra=phrase_extra)
            time.sleep(delay)  # lets the kill test land in the middle of the job
    return store


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    record_job(args.root, job_order(), delay=args.delay)
