"""Shard sets: the files under a store's or a cache's shards/ folder, written so that nothing is lost or half-read.

    shards/r0000-s000000.safetensors        rank 0's first shard: tensors, and one JSON header under HEADER_KEY
    shards/r0000-s000000.manifest.parquet   its manifest fragment, written after the shard
    shards/r0000.lock                       held (flock) while a writer for rank 0 is open

A shard is visible only once its manifest fragment exists: the shard is written to a temporary name,
fsynced and renamed, then the fragment is written the same way. A job killed at any point therefore
leaves either a complete shard + fragment or nothing that counts, and a rerun of the same rank picks up
at the next sequence number. Every fragment row carries the sha256 and size of its shard file; a shard is
checked against them before any of its bytes are used (once per process while the file is unchanged) and
a mismatch raises StoreCorruptionError naming the file. Each fragment carries the sha256 of its own rows in
its parquet metadata, checked whenever it is read. `Store` (attention records) and `EmbeddingCache` (SAM
image embeddings) each keep their rows in one ShardSet.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save as save_safetensors

log = logging.getLogger(__name__)

HEADER_KEY = "flmm_probe"  # the one safetensors metadata key; one key keeps shard bytes deterministic
_SHARD_RE = re.compile(r"^r(\d{4})-s(\d{6})\.safetensors$")
MAX_RANKS, MAX_SHARDS_PER_RANK = 10_000, 1_000_000  # what the fixed-width names hold
_FRAGMENT_SUFFIX = ".manifest.parquet"
TENSOR_PREFIXES = ("key_", "offset_", "shape_")
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


def atomic_write(path: Path, data: bytes | Callable[[Path], None]) -> None:
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
        atomic_write(self.folder / name, blob)
        frame = self._ordered(pd.DataFrame(rows))
        atomic_write(self.fragment_path(name), lambda p: _write_fragment(frame, p))
        log.info("Wrote shard %s (%d rows, %.1f MiB)", self.folder / name, len(rows), len(blob) / 2**20)
        return frame

    def _ordered(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Fixed column order (base, tensor columns sorted, extras sorted), whatever order rows came in."""
        tensor_cols = sorted(c for c in frame.columns if c.startswith(TENSOR_PREFIXES))
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
        atomic_write(consolidated, lambda p: frame.to_parquet(p, index=False))
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
