"""On-disk cache of SAM image embeddings, computed once per image by the frozen encoder (`fill`).

Same files and guarantees as the Store, from the same ShardSet (flmm_probe/shards.py): rank/sequence-named
safetensors shards, each followed by an atomically written manifest fragment, sha256 checked before use. Embeddings are
kept in the dtype they were put in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .data.samples import GroundingDataset
from .shards import LOCATION_COLUMNS, MAX_RANKS, ShardSet

log = logging.getLogger(__name__)

_BASE = ["image_id", "dtype", *LOCATION_COLUMNS]


class EmbeddingCache:
    """Image embeddings keyed by an image id (a dataset image id, or the sha256 of the image bytes).

    `put` buffers and writes a shard every `shard_size` images; `close` (or leaving the `with` block)
    writes the rest. Embeddings put by other processes become visible after `refresh()`.
    manifest: one row per image, sorted by image_id: image_id, dtype, shard, shard_bytes,
        shard_sha256, key_embedding, offset_embedding ([begin, end) bytes), shape_embedding (tuple).
    """

    def __init__(self, root: str | Path, *, rank: int = 0, shard_size: int = 16) -> None:
        if not 0 <= rank < MAX_RANKS or shard_size < 1:
            raise ValueError(f"Need 0 <= rank < {MAX_RANKS} and shard_size >= 1, got {rank=}, {shard_size=}.")
        self.root = Path(root)
        self.rank, self.shard_size = rank, shard_size
        self.shards = ShardSet(self.root / "shards", ["image_id"], _BASE)
        self._pending: dict[str, tuple[torch.Tensor, dict[str, Any]]] = {}
        self._index: dict[str, dict[str, Any]] = {}
        self._seq: int | None = None  # set when this process first writes (and holds the rank's lock)
        self.refresh()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def refresh(self) -> None:
        """Re-read the manifest so that embeddings written by other processes are seen."""
        self._index = {row["image_id"]: row for row in self.manifest.to_dict("records")}

    @property
    def manifest(self) -> pd.DataFrame:
        return self.shards.manifest(self.root / "manifest.parquet")

    def consolidate(self) -> pd.DataFrame:
        """Write manifest.parquet from all fragments (sorted by image id) and return it."""
        return self.shards.consolidate(self.root / "manifest.parquet")

    @torch.no_grad()
    def fill(self, refiner, dataset: GroundingDataset, progress: bool = True) -> int:
        """Put the frozen image embedding (``refiner.embed``, a ``SamRefiner``'s) of every image of ``dataset`` that
        the cache lacks, keyed by the sample's ``image_key``; returns how many were computed. Resumes: a killed
        fill rerun computes only what is missing. Closes the cache's writer at the end."""
        computed = 0
        with self:
            for sample in tqdm(dataset, disable=not progress, desc="embed", unit="sample"):
                if sample.image_key in self:
                    continue
                embedding, input_size, original_size = refiner.embed(sample.image())
                self.put(sample.image_key, embedding[0], {"input_size": list(input_size), "original_size": list(original_size)})
                computed += 1
        return computed

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._pending or image_id in self._index

    def put(self, image_id: str, embedding: torch.Tensor, meta: dict[str, Any] | None = None) -> bool:
        """Cache `embedding` (e.g. SAM's (256, 64, 64)) for `image_id`; False if it is already cached.

        meta: JSON-serialisable provenance (encoder checkpoint, input size, ...), returned by `meta`.
        """
        if image_id in self:
            log.debug("Skipping %s: already cached", image_id)
            return False
        if self._seq is None:
            self.shards.acquire(self.rank)
            self._seq = self.shards.next_seq(self.rank)
        self._pending[image_id] = (embedding.detach().to("cpu").contiguous(), dict(meta or {}))
        if len(self._pending) >= self.shard_size:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the pending embeddings as one shard (nothing if none are pending)."""
        if not self._pending:
            return
        tensors = {image_id: t for image_id, (t, _) in self._pending.items()}
        rows = [{"image_id": i, "dtype": str(t.dtype).removeprefix("torch."), "key_embedding": i,
                 "shape_embedding": list(t.shape)} for i, t in tensors.items()]
        header = {"images": {i: m for i, (_, m) in self._pending.items()}}
        frame = self.shards.write(self.rank, self._seq, tensors, header, rows)
        self._seq += 1
        self._pending = {}
        for row in frame.to_dict("records"):
            row["offset_embedding"] = tuple(row["offset_embedding"])
            row["shape_embedding"] = tuple(row["shape_embedding"])
            self._index[row["image_id"]] = row

    def close(self) -> None:
        """Write what is pending and release this rank."""
        self.flush()
        if self._seq is not None:
            self.shards.release(self.rank)
            self._seq = None

    def _row(self, image_id: str) -> dict[str, Any]:
        if image_id not in self._index:
            raise KeyError(f"Image {image_id!r} is not in the embedding cache at {self.root}.")
        row = self._index[image_id]
        self.shards.verify(row["shard"], row["shard_sha256"], int(row["shard_bytes"]))
        return row

    def get(self, image_id: str) -> torch.Tensor:
        """The cached embedding, in the dtype and shape it was put in; KeyError if absent."""
        if image_id in self._pending:
            return self._pending[image_id][0]
        row = self._row(image_id)
        dtype = getattr(torch, row["dtype"])
        return self.shards.tensor(row["shard"], row["offset_embedding"], row["shape_embedding"], dtype)

    def meta(self, image_id: str) -> dict[str, Any]:
        """The meta dict put with the embedding."""
        if image_id in self._pending:
            return self._pending[image_id][1]
        row = self._row(image_id)
        return self.shards.header(row["shard"])["images"][image_id]

    def verify(self) -> list[str]:
        """Check every shard against its checksum; returns the names of the bad ones (empty if none)."""
        return self.shards.verify_all(self.manifest)

    def discard_shard(self, shard: str) -> None:
        """Remove a (corrupt) shard and its rows; their images are encoded again on the next `put`."""
        self.shards.discard(shard)
        self.refresh()
