"""Sharded on-disk store of AttentionRecords: safetensors shards plus a parquet manifest.

Layout of a store folder::

    store.json                              format version, dtypes, the recording config
    manifest.parquet                        consolidated manifest (optional; fragments are the truth)
    shards/r0000-s000000.safetensors        rank 0's first shard
    shards/r0000-s000000.manifest.parquet   its manifest fragment, written after the shard
    shards/r0000.lock                       held (flock) while a writer for rank 0 is open

The shard files' guarantees (atomic shards and fragments, resumable ranks, sha256 checks before use) are
the ShardSet's (flmm_probe/shards.py). A rerun of the same rank picks up with the same shard boundaries as an
uninterrupted run (same input order and shard_size), so its shards are byte-identical. Ranks write disjoint
sample sets into their own shards; `consolidate` sorts all fragments' rows by sample id, so the manifest's
content does not depend on how samples were split across ranks (only the location columns: shard, shard_*,
offset_* do).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .record import AttentionRecord
from .shards import LOCATION_COLUMNS, MAX_RANKS, TENSOR_PREFIXES, ShardSet, StoreCorruptionError, atomic_write, location_columns

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Stored tensors that are not attention maps: hidden states, image attention mass, key norms per kind.
_NOT_MAPS = ("hidden", "image_mass", "norms_")


_STORE_BASE = ["sample_id", "phrase_index", "phrase", "span_start", "span_end", "image_height", "image_width",
               "maps_dtype", "hidden_dtype", *LOCATION_COLUMNS]


class Store:
    """A sharded, resumable store of AttentionRecords (see the module docstring for the files).

    manifest: one row per (sample, phrase), sorted by (sample_id, phrase_index), columns
        sample_id (str), phrase_index (int), phrase (str), span_start, span_end (char span in the text),
        image_height, image_width (pixels), maps_dtype, hidden_dtype (str, as stored),
        shard (file name under shards/), shard_bytes, shard_sha256 (the whole shard file),
        key_<k> (tensor name in the shard), offset_<k> ([begin, end) bytes in the shard file),
        shape_<k> (tuple) for k in the map kinds ("global", "tiles", ...) and "hidden",
        then the writer's extras (split, mask reference, ...). Per phrase, maps_<kind> is
        (layer, head, y, x) and hidden is (token, layer, dim).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        spec_path = self.root / "store.json"
        if not spec_path.exists():
            raise FileNotFoundError(f"No store at {self.root} (no store.json); create one with Store.create.")
        spec = json.loads(spec_path.read_text())
        if spec.get("format") != FORMAT_VERSION:
            raise ValueError(f"{spec_path} has store format {spec.get('format')}; this code reads {FORMAT_VERSION}.")
        self.config: dict[str, Any] = spec["config"]
        self.maps_dtype: torch.dtype = DTYPES[spec["maps_dtype"]]
        self.hidden_dtype: torch.dtype = DTYPES[spec["hidden_dtype"]]
        self.shards = ShardSet(self.root / "shards", ["sample_id", "phrase_index"], _STORE_BASE)
        self._manifest: pd.DataFrame | None = None
        self._manifest_shards: list[str] = []
        self._rows: dict[str, list[int]] = {}

    @classmethod
    def create(cls, root: str | Path, config: dict[str, Any], *, maps_dtype: str = "float16",
               hidden_dtype: str = "float16", exist_ok: bool = False) -> Store:
        """Start a store at `root` with the recording `config` (model id, prompt, ...: JSON-serialisable).

        exist_ok: open an existing store instead, provided its config and dtypes are the same (what a
        resumed job wants); a different config raises ValueError rather than mixing two recordings.
        """
        for d in (maps_dtype, hidden_dtype):
            if d not in DTYPES:
                raise ValueError(f"Unsupported dtype {d!r}; choose one of {sorted(DTYPES)}.")
        root = Path(root)
        spec = {"format": FORMAT_VERSION, "maps_dtype": maps_dtype, "hidden_dtype": hidden_dtype, "config": config}
        spec_path = root / "store.json"
        if spec_path.exists():
            if not exist_ok:
                raise FileExistsError(f"A store already exists at {root}; "
                                      "open it with Store.open or pass exist_ok=True.")
            if json.loads(spec_path.read_text()) != json.loads(json.dumps(spec)):
                raise ValueError(f"The store at {root} was created with another config or dtypes; use a new folder.")
            return cls(root)
        root.mkdir(parents=True, exist_ok=True)
        atomic_write(spec_path, json.dumps(spec, indent=2, sort_keys=True).encode())
        return cls(root)

    @classmethod
    def open(cls, root: str | Path) -> Store:
        """Open the store at `root` (FileNotFoundError if there is none)."""
        return cls(root)

    def writer(self, rank: int = 0, shard_size: int = 64) -> StoreWriter:
        """A context manager that records into this rank's shards, `shard_size` samples per shard."""
        return StoreWriter(self, rank, shard_size)

    @property
    def manifest(self) -> pd.DataFrame:
        """The manifest DataFrame (columns in the class docstring); re-read when shards appear or go."""
        shards = self.shards.shards()
        if self._manifest is None or shards != self._manifest_shards:
            self._manifest = self.shards.manifest(self.root / "manifest.parquet")
            self._manifest_shards = shards
            # plain dicts per sample, so that the training path does no pandas work per call
            self._rows = {}
            for row in self._manifest.to_dict("records"):
                self._rows.setdefault(row["sample_id"], []).append(row)
        return self._manifest

    def consolidate(self) -> pd.DataFrame:
        """Write manifest.parquet from all fragments (sorted by sample id, phrase index) and return it."""
        self._manifest = None
        return self.shards.consolidate(self.root / "manifest.parquet")

    def done_ids(self) -> set[str]:
        """Sample ids already stored (in a visible shard); a resumed job skips these."""
        frame = self.shards.read_fragments(self.shards.shards(), columns=["sample_id"])
        return set(frame["sample_id"])

    def _sample_rows(self, sample_id: str) -> list[dict[str, Any]]:
        """The sample's manifest rows in phrase order, its shard verified; the manifest is re-read only on a miss."""
        if self._manifest is None or sample_id not in self._rows:
            self._manifest = None  # another process may have added it since
            _ = self.manifest
        if sample_id not in self._rows:
            raise KeyError(f"Sample {sample_id!r} is not in the store at {self.root}.")
        rows = self._rows[sample_id]
        self.shards.verify(rows[0]["shard"], rows[0]["shard_sha256"], int(rows[0]["shard_bytes"]))
        return rows

    def _tensor(self, row: dict[str, Any], name: str, dtype: torch.dtype) -> torch.Tensor:
        return self.shards.tensor(row["shard"], row[f"offset_{name}"], row[f"shape_{name}"], dtype)

    def map_kinds(self) -> list[str]:
        """The view kinds of the maps any stored record has: "global" first, then "tiles", then any other, sorted."""
        manifest = self.manifest
        found = {c[len("key_"):] for c in manifest.columns if c.startswith("key_")
                 and not c[len("key_"):].startswith(_NOT_MAPS) and manifest[c].notna().any()}
        order = ["global", "tiles"]
        return [k for k in order if k in found] + sorted(found - set(order))

    def maps(self, sample_id: str, phrase_index: int) -> dict[str, torch.Tensor]:
        """Training fast path: {kind: (layer, head, y, x)} in the stored dtype, read at manifest offsets."""
        rows = self._sample_rows(sample_id)
        if not 0 <= phrase_index < len(rows):
            raise IndexError(f"Sample {sample_id!r} has {len(rows)} phrases; asked for phrase {phrase_index}.")
        row = rows[phrase_index]
        kinds = [c[len("key_"):] for c, v in row.items()
                 if c.startswith("key_") and isinstance(v, str) and not c[len("key_"):].startswith(_NOT_MAPS)]
        return {kind: self._tensor(row, kind, self.maps_dtype) for kind in kinds}

    def read(self, sample_id: str) -> AttentionRecord:
        """The stored record; maps and hidden states come back as float32 (values rounded to the stored dtype)."""
        rows = self._sample_rows(sample_id)
        head = self.shards.header(rows[0]["shard"])["samples"][sample_id]
        maps = {kind: torch.stack([self._tensor(r, kind, self.maps_dtype) for r in rows]).float()
                for kind in head["kinds"]}
        hidden = [self._tensor(r, "hidden", self.hidden_dtype).float() for r in rows] if head["has_hidden"] else []
        mass = torch.stack([self._tensor(r, "image_mass", torch.float32) for r in rows]) if head.get("has_mass") else None
        norms = {kind: self._tensor(rows[0], f"norms_{kind}", self.maps_dtype).float() for kind in head.get("norm_kinds", [])}
        return AttentionRecord(
            text=head["text"],
            phrases=[r["phrase"] for r in rows],
            spans=[(int(r["span_start"]), int(r["span_end"])) for r in rows],
            maps=maps,
            image_size=tuple(head["image_size"]),
            hidden=hidden,
            image_mass=mass,
            key_norms=norms,
            meta=head["meta"],
        )

    def iter_records(self) -> Iterator[tuple[str, AttentionRecord]]:
        """(sample_id, record) for every stored sample, in sample-id order."""
        for sample_id in self.manifest["sample_id"].unique():
            yield sample_id, self.read(sample_id)

    def verify(self) -> list[str]:
        """Check every shard against its checksum; returns the names of the bad ones (empty if none)."""
        return self.shards.verify_all(self.manifest)

    def discard_shard(self, shard: str) -> None:
        """Remove a (corrupt) shard and its rows; rerunning its rank records those samples again."""
        self.shards.discard(shard)
        self._manifest = None

    def bytes_per_phrase(self) -> dict[str, float]:
        """Mean bytes per stored phrase: per tensor (maps_<kind>, hidden, image_mass, norms_<kind>), shard
        overhead, and total on disk."""
        manifest = self.manifest
        n = max(len(manifest), 1)
        out = {}
        for col in [c for c in manifest.columns if c.startswith("offset_")]:
            name = col[len("offset_"):]
            out[name if name.startswith(_NOT_MAPS) else f"maps_{name}"] = sum(e - b for b, e in manifest[col].dropna()) / n
        total = manifest.drop_duplicates("shard")["shard_bytes"].sum() / n
        out["overhead"] = total - sum(out.values())
        out["total"] = float(total)
        return out


class StoreWriter:
    """Buffers records and writes one shard per `shard_size` samples for one rank of a Store.

    Leaving the `with` block normally writes the last, shorter shard. Leaving it with an exception
    behaves like a crash: buffered samples are dropped (at most shard_size - 1) and a rerun records
    them, so a resumed store has the same shards as one that never failed.
    """

    def __init__(self, store: Store, rank: int, shard_size: int) -> None:
        if not 0 <= rank < MAX_RANKS or shard_size < 1:
            raise ValueError(f"Need 0 <= rank < {MAX_RANKS} and shard_size >= 1, got {rank=}, {shard_size=}.")
        self.store, self.rank, self.shard_size = store, rank, shard_size
        # per buffered sample: (its tensors by shard key, its header, its manifest rows)
        self._buffer: list[tuple[dict[str, torch.Tensor], dict[str, Any], list[dict[str, Any]]]] = []
        self._seen: set[str] = set()
        self._seq = 0
        self._open = False

    def __enter__(self) -> StoreWriter:
        self.store.shards.acquire(self.rank)
        self._open = True
        self._seq = self.store.shards.next_seq(self.rank)
        self._seen = self.store.done_ids()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                self.flush()
            elif self._buffer:
                log.warning("Rank %d stopped by %s; dropping %d buffered samples, a rerun records them",
                            self.rank, exc_type.__name__, len(self._buffer))
        finally:
            self._buffer = []
            self._open = False
            self.store.shards.release(self.rank)

    def add(self, sample_id: str, record: AttentionRecord, extra: dict[str, Any] | None = None,
            phrase_extra: Sequence[dict[str, Any]] | None = None) -> bool:
        """Queue one sample; returns False (and stores nothing) if `sample_id` is already stored or queued.

        extra: columns for all of the sample's manifest rows (split, image path, ...).
        phrase_extra: one dict of columns per phrase (its mask reference, ...).
        Values must be parquet scalars (str, int, float, bool, None). Raises ValueError, before
        anything is queued, for a record with no phrases, reserved column names, or values the store
        dtypes cannot hold.
        """
        if not self._open:
            raise RuntimeError("Use the writer as a context manager: `with store.writer(...) as w: w.add(...)`.")
        if sample_id in self._seen:
            log.debug("Skipping %s: already stored", sample_id)
            return False
        if not record.phrases:
            raise ValueError(f"Sample {sample_id!r} has no phrases; a record needs at least one to be stored.")
        if any(kind.startswith(_NOT_MAPS) for kind in record.maps):
            raise ValueError(f"A map kind may not start with {_NOT_MAPS} (names of the other tensors).")
        phrase_extra = list(phrase_extra) if phrase_extra is not None else [{} for _ in record.phrases]
        if len(phrase_extra) != len(record.phrases):
            raise ValueError(f"phrase_extra has {len(phrase_extra)} entries for {len(record.phrases)} phrases.")
        for name in {*(extra or {}), *(k for d in phrase_extra for k in d)}:
            if name in _STORE_BASE or name.startswith(TENSOR_PREFIXES):
                raise ValueError(f"Extra column {name!r} clashes with a manifest column; rename it.")

        has_hidden = bool(record.hidden)
        has_mass = record.image_mass is not None
        header = {"text": record.text, "image_size": list(record.image_size), "kinds": list(record.maps),
                  "has_hidden": has_hidden, "has_mass": has_mass, "norm_kinds": list(record.key_norms),
                  "meta": record.meta}
        tensors: dict[str, torch.Tensor] = {}
        rows: list[dict[str, Any]] = []
        for p, (phrase, (start, end)) in enumerate(zip(record.phrases, record.spans)):
            row: dict[str, Any] = {
                "sample_id": sample_id, "phrase_index": p, "phrase": phrase, "span_start": start, "span_end": end,
                "image_height": record.image_size[0], "image_width": record.image_size[1],
                "maps_dtype": _dtype_name(self.store.maps_dtype),
                "hidden_dtype": _dtype_name(self.store.hidden_dtype) if has_hidden else None,
            }
            named = {kind: (m[p], self.store.maps_dtype) for kind, m in record.maps.items()}  # (layer head y x)
            if has_hidden:
                named["hidden"] = (record.hidden[p], self.store.hidden_dtype)  # (token layer dim)
            if has_mass:
                named["image_mass"] = (record.image_mass[p], torch.float32)  # (layer head)
            if p == 0:  # key norms belong to the sample, not to a phrase: kept with its first phrase
                named.update({f"norms_{k}": (n, self.store.maps_dtype) for k, n in record.key_norms.items()})
            for name, (t, dtype) in named.items():
                key = f"{sample_id}/{p}/{name}"
                tensors[key] = _cast(t, dtype, f"{sample_id!r} phrase {p} {name}")
                row[f"key_{name}"] = key
                row[f"shape_{name}"] = list(t.shape)
            rows.append({**row, **(extra or {}), **phrase_extra[p]})

        self._buffer.append((tensors, {sample_id: header}, rows))
        self._seen.add(sample_id)
        if len(self._buffer) >= self.shard_size:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the buffered samples as one shard (nothing if the buffer is empty)."""
        if not self._buffer:
            return
        tensors = {k: t for sample_tensors, _, _ in self._buffer for k, t in sample_tensors.items()}
        samples = {sid: h for _, header, _ in self._buffer for sid, h in header.items()}
        rows = [row for _, _, sample_rows in self._buffer for row in sample_rows]
        self.store.shards.write(self.rank, self._seq, tensors, {"samples": samples}, rows)
        self._seq += 1
        self._buffer = []


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _cast(t: torch.Tensor, dtype: torch.dtype, what: str) -> torch.Tensor:
    """`t` in `dtype`, contiguous; raises ValueError where finite values overflow the dtype."""
    out = t.detach().to("cpu", dtype).contiguous()
    if not torch.isfinite(out).all() and torch.isfinite(t).all():
        raise ValueError(f"{what} overflows {dtype} (max |x| = {t.abs().max().item():.3g}); "
                         "create the store with a wider dtype (bfloat16 or float32).")
    return out


__all__ = ["DTYPES", "FORMAT_VERSION", "Store", "StoreCorruptionError", "StoreWriter", "location_columns"]
