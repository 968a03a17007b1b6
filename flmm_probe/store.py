"""Sharded on-disk store of AttentionRecords: safetensors shards plus a parquet manifest.

Layout of a store folder::

    store.json                              format version, dtypes, the recording config
    manifest.parquet                        consolidated manifest (optional; fragments are the truth)
    shards/r0000-s000000.safetensors        rank 0's first shard
    shards/r0000-s000000.manifest.parquet   its manifest fragment, written after the shard
    shards/r0000.lock                       held (flock) while a writer for rank 0 is open

A shard is visible only once its manifest fragment exists: the shard is written to a temporary name,
fsynced and renamed, then the fragment is written the same way. A job killed at any point therefore
leaves either a complete shard + fragment or nothing that counts, and a rerun of the same rank picks up
at the next sequence number with the same shard boundaries as an uninterrupted run (same input order
and shard_size), so its shards are byte-identical. Ranks write disjoint sample sets into their own
shards; `consolidate` sorts all fragments' rows by sample id, so the manifest's content does not depend
on how samples were split across ranks (only the location columns: shard, shard_*, offset_* do).

Every manifest row carries the sha256 and size of its shard file; a shard is checked against them
before any of its bytes are used (once per process while the file is unchanged) and a mismatch raises
StoreCorruptionError naming the file. Each fragment carries the sha256 of its own rows in its parquet
metadata, checked whenever it is read.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save as save_safetensors

from .record import AttentionRecord

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
HEADER_KEY = "flmm_probe"  # the one safetensors metadata key; one key keeps shard bytes deterministic
_SHARD_RE = re.compile(r"^r(\d{4})-s(\d{6})\.safetensors$")
MAX_RANKS, MAX_SHARDS_PER_RANK = 10_000, 1_000_000  # what the fixed-width names hold
_FRAGMENT_SUFFIX = ".manifest.parquet"
_TENSOR_PREFIXES = ("key_", "offset_", "shape_")
# Stored tensors that are not attention maps: hidden states, image attention mass, key norms per kind.
_NOT_MAPS = ("hidden", "image_mass", "norms_")
# Columns that say where rows live rather than what they hold; they differ between rank splits.
LOCATION_COLUMNS = ("shard", "shard_bytes", "shard_sha256")


class StoreCorruptionError(RuntimeError):
    """A shard file is missing, truncated or does not match its checksum; `shard` is its path."""

    def __init__(self, shard: Path, reason: str) -> None:
        self.shard = shard
        super().__init__(
            f"Corrupt shard {shard}: {reason}. Its data was not used. Re-record it: call "
            f"discard_shard({shard.name!r}) on the store (or cache), then rerun the job for that rank; "
            "it records the discarded samples again."
        )


def location_columns(manifest: pd.DataFrame) -> list[str]:
    """The manifest columns that depend on shard placement (shard, its checksum and size, byte offsets)."""
    return [c for c in manifest.columns if c in LOCATION_COLUMNS or c.startswith("offset_")]


def _atomic_write(path: Path, data: bytes | Callable[[Path], None]) -> None:
    """Write `data` (bytes, or a function writing to a given path) to `path` all at once or not at all.

    A temporary name in the same folder (so the rename cannot cross file systems), fsync, os.replace,
    then fsync the folder so the rename itself survives a power cut.
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(data, bytes):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        else:
            data(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


_FRAGMENT_DIGEST_KEY = b"flmm_probe.sha256"


def _digest(table: pa.Table) -> str:
    """sha256 of a fragment's rows, column by column (names and values as Arrow holds them, so that the digest
    reads the same from the table written and the table read back)."""
    sha = hashlib.sha256()
    for name, column in zip(table.column_names, table.columns):
        sha.update(json.dumps([name, column.to_pylist()], default=str).encode())
    return sha.hexdigest()


def _write_fragment(frame: pd.DataFrame, path: Path) -> None:
    """A fragment as parquet, its rows' sha256 in the file's metadata (checked by every read)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _FRAGMENT_DIGEST_KEY: _digest(table).encode()})
    pq.write_table(table, path)


def _tensor_offsets(blob: bytes) -> dict[str, tuple[int, int]]:
    """Absolute [begin, end) byte offsets of every tensor in serialized safetensors bytes."""
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    start = 8 + header_len
    return {k: (start + v["data_offsets"][0], start + v["data_offsets"][1])
            for k, v in header.items() if k != "__metadata__"}


class ShardSet:
    """One folder of rank/sequence-named safetensors shards with atomic manifest fragments.

    The shared machinery of Store and EmbeddingCache: naming, atomic writes, fragment discovery,
    checksum verification (cached per process while a file's size, mtime and inode are unchanged),
    raw tensor reads at manifest offsets, and consolidation.
    """

    def __init__(self, folder: Path, sort_by: Sequence[str], base_columns: Sequence[str]) -> None:
        self.folder = folder
        self.sort_by = list(sort_by)
        self.base_columns = list(base_columns)
        self._verified: dict[str, tuple[int, int, int]] = {}
        self._locks: dict[int, int] = {}

    @staticmethod
    def shard_name(rank: int, seq: int) -> str:
        if seq >= MAX_SHARDS_PER_RANK:
            raise ValueError(f"Rank {rank} reached {MAX_SHARDS_PER_RANK} shards; use a larger shard_size.")
        return f"r{rank:04d}-s{seq:06d}.safetensors"

    def fragment_path(self, shard: str) -> Path:
        return self.folder / shard.replace(".safetensors", _FRAGMENT_SUFFIX)

    def shards(self) -> list[str]:
        """Names of the visible shards (those with a manifest fragment), sorted."""
        if not self.folder.exists():
            return []
        names = (p.name[: -len(_FRAGMENT_SUFFIX)] + ".safetensors" for p in self.folder.glob(f"*{_FRAGMENT_SUFFIX}"))
        return sorted(n for n in names if _SHARD_RE.match(n))

    def next_seq(self, rank: int) -> int:
        seqs = [int(m[2]) for n in self.shards() if (m := _SHARD_RE.match(n)) and int(m[1]) == rank]
        return max(seqs, default=-1) + 1

    def acquire(self, rank: int) -> None:
        """Lock `rank` for this process and remove what a killed writer of it left behind.

        flock is released by the kernel when a process dies, so a killed job never blocks its rerun,
        while a second live writer of the same rank (which would overwrite its shards) is refused.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / f"r{rank:04d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RuntimeError(f"Rank {rank} of {self.folder} is being written by another process; "
                                   "give each live process its own rank.") from e
            raise
        self._locks[rank] = fd
        visible = set(self.shards())
        for p in self.folder.glob(f"r{rank:04d}-s*"):
            orphan_shard = _SHARD_RE.match(p.name) and p.name not in visible
            if ".tmp-" in p.name or orphan_shard:
                log.info("Removing %s left by an interrupted writer of rank %d", p, rank)
                p.unlink()

    def release(self, rank: int) -> None:
        fd = self._locks.pop(rank)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def write(self, rank: int, seq: int, tensors: dict[str, torch.Tensor], header: dict[str, Any],
              rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Write one shard and then its fragment, both atomically; returns the fragment's rows.

        Each row names its tensors in `key_<name>` columns; this fills `offset_<name>` (absolute
        [begin, end) bytes in the shard file) and the shard's name, size and sha256.
        """
        name = self.shard_name(rank, seq)
        blob = save_safetensors(tensors, metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})
        offsets = _tensor_offsets(blob)
        sha = hashlib.sha256(blob).hexdigest()
        for row in rows:
            for col in [c for c in row if c.startswith("key_")]:
                row["offset_" + col[4:]] = offsets[row[col]]
            row.update(shard=name, shard_bytes=len(blob), shard_sha256=sha)
        _atomic_write(self.folder / name, blob)
        frame = self._ordered(pd.DataFrame(rows))
        _atomic_write(self.fragment_path(name), lambda p: _write_fragment(frame, p))
        log.info("Wrote shard %s (%d rows, %.1f MiB)", self.folder / name, len(rows), len(blob) / 2**20)
        return frame

    def _ordered(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Fixed column order (base, tensor columns sorted, extras sorted), whatever order rows came in."""
        tensor_cols = sorted(c for c in frame.columns if c.startswith(_TENSOR_PREFIXES))
        extras = sorted(c for c in frame.columns if c not in self.base_columns and c not in tensor_cols)
        return frame[[c for c in self.base_columns if c in frame.columns] + tensor_cols + extras]

    def read_fragments(self, shards: Sequence[str], columns: list[str] | None = None) -> pd.DataFrame:
        frames = [self._fragment(s, columns) for s in shards]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or self.base_columns)

    def _fragment(self, shard: str, columns: list[str] | None) -> pd.DataFrame:
        """One shard's manifest fragment; a fragment that cannot be read raises StoreCorruptionError naming it."""
        path = self.fragment_path(shard)
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as err:  # pyarrow's errors derive from these
            raise StoreCorruptionError(self.folder / shard, f"its manifest fragment {path.name} cannot be read "
                                                            f"({type(err).__name__}: {err})") from err
        expected = (table.schema.metadata or {}).get(_FRAGMENT_DIGEST_KEY)
        # Fragments written before they carried a digest have none to check.
        if expected is not None and _digest(table).encode() != expected:
            raise StoreCorruptionError(self.folder / shard, f"its manifest fragment {path.name} does not match its "
                                                            "sha256 (its rows were changed after they were written)")
        frame = table.to_pandas()
        return frame[columns] if columns is not None else frame

    def manifest(self, consolidated: Path) -> pd.DataFrame:
        """All visible rows sorted by `sort_by`; from `consolidated` when it covers exactly the visible shards."""
        shards = self.shards()
        frame = None
        if consolidated.exists():
            # stale if shards came or went, or a fragment was rewritten (a discarded shard re-recorded)
            newest = max((self.fragment_path(s).stat().st_mtime_ns for s in shards), default=0)
            if consolidated.stat().st_mtime_ns >= newest:
                try:
                    frame = pd.read_parquet(consolidated)
                except (OSError, ValueError) as err:  # the fragments are the truth: read them instead
                    log.warning("%s cannot be read (%s); reading the manifest fragments instead (consolidate() rewrites it)",
                                consolidated, err)
                    frame = None
                if frame is not None and set(frame["shard"]) != set(shards):
                    frame = None
            if frame is None:
                log.debug("%s is stale; reading the manifest fragments", consolidated)
        if frame is None:
            frame = self.read_fragments(shards)
            frame = self._ordered(frame).sort_values(self.sort_by, kind="stable", ignore_index=True)
        for col in [c for c in frame.columns if c.startswith(("offset_", "shape_"))]:
            # parquet returns lists as numpy arrays; tuples compare and hash like the shapes they are
            frame[col] = [tuple(int(x) for x in v) if hasattr(v, "__len__") else None for v in frame[col]]
        dup = frame.duplicated(self.sort_by, keep=False)
        if dup.any():
            where = frame.loc[dup, self.sort_by + ["shard"]].to_string(index=False)
            raise ValueError(f"Rows recorded more than once in {self.folder} (ranks overlapped?):\n{where}\n"
                             "Discard one shard of each pair with discard_shard(name).")
        return frame

    def consolidate(self, consolidated: Path) -> pd.DataFrame:
        frame = self.manifest(consolidated)
        _atomic_write(consolidated, lambda p: frame.to_parquet(p, index=False))
        log.info("Consolidated %d rows from %d shards into %s", len(frame), frame["shard"].nunique(), consolidated)
        return frame

    def verify(self, shard: str, sha256: str, nbytes: int) -> None:
        """Raise StoreCorruptionError unless the file `shard` has `nbytes` bytes with this sha256."""
        path = self.folder / shard
        try:
            st = path.stat()
        except FileNotFoundError:
            raise StoreCorruptionError(path, "the file is missing") from None
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._verified.get(shard) == stamp:
            return
        if st.st_size != nbytes:
            raise StoreCorruptionError(path, f"size {st.st_size} bytes, the manifest says {nbytes} (truncated?)")
        with open(path, "rb") as f:
            found = hashlib.file_digest(f, "sha256").hexdigest()
        if found != sha256:
            raise StoreCorruptionError(path, f"sha256 {found[:12]}..., the manifest says {sha256[:12]}...")
        self._verified[shard] = stamp

    def verify_all(self, manifest: pd.DataFrame) -> list[str]:
        """Names of the shards that fail verification (each logged); empty when all are intact."""
        bad = []
        for shard, nbytes, sha in manifest[list(LOCATION_COLUMNS)].drop_duplicates("shard").itertuples(index=False):
            try:
                self.verify(shard, sha, int(nbytes))
            except StoreCorruptionError as e:
                log.error("%s", e)
                bad.append(shard)
        return bad

    def header(self, shard: str) -> dict[str, Any]:
        """The JSON header a shard was written with (verify the shard first)."""
        with open(self.folder / shard, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(header_len))["__metadata__"]
        return json.loads(meta[HEADER_KEY])

    def tensor(self, shard: str, offset: tuple[int, int], shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The tensor stored at bytes [offset) of `shard` (verify the shard first); no header parsing."""
        begin, end = offset
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        with open(self.folder / shard, "rb") as f:
            f.seek(begin)
            buf = bytearray(f.read(end - begin))
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def discard(self, shard: str) -> None:
        """Delete a shard and its fragment, fragment first, so its rows stop counting before its data goes."""
        self.fragment_path(shard).unlink(missing_ok=True)
        (self.folder / shard).unlink(missing_ok=True)
        self._verified.pop(shard, None)
        log.warning("Discarded shard %s; rerun its rank to record its samples again", self.folder / shard)


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
        _atomic_write(spec_path, json.dumps(spec, indent=2, sort_keys=True).encode())
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
            if name in _STORE_BASE or name.startswith(_TENSOR_PREFIXES):
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
