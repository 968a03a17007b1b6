"""Sharded store and embedding cache: round trips, crash/resume, corruption, rank splits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from store_child import NUM_SAMPLES, job_order, record_job, sample_id, synthetic_record

from flmm_probe.cache import EmbeddingCache
from flmm_probe.store import Store, StoreCorruptionError, location_columns

HELPER = Path(__file__).with_name("store_child.py")


def assert_same_store(a: Store, b: Store, *, same_placement: bool = True) -> None:
    """Same manifest (location columns too when `same_placement`) and the same tensors, sample by sample."""
    ma, mb = a.manifest, b.manifest
    if not same_placement:
        ma, mb = ma.drop(columns=location_columns(ma)), mb.drop(columns=location_columns(mb))
    pd.testing.assert_frame_equal(ma, mb)
    for (ida, ra), (idb, rb) in zip(a.iter_records(), b.iter_records(), strict=True):
        assert ida == idb and ra.text == rb.text and ra.meta == rb.meta and ra.spans == rb.spans
        assert ra.maps.keys() == rb.maps.keys()
        assert all(torch.equal(ra.maps[k], rb.maps[k]) for k in ra.maps)
        assert all(torch.equal(x, y) for x, y in zip(ra.hidden, rb.hidden, strict=True))
        assert torch.equal(ra.image_mass, rb.image_mass)
        assert all(torch.equal(ra.key_norms[k], rb.key_norms[k]) for k in ra.maps)


def shard_files(store: Store) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.shards.folder.glob("*.safetensors"))}


def test_round_trip_float16_and_float32(tmp_path):
    store = record_job(tmp_path / "f16", job_order())
    reopened = Store.open(tmp_path / "f16")
    assert reopened.config == {"model": "synthetic", "pooling": "mean"}
    assert reopened.done_ids() == {sample_id(i) for i in range(NUM_SAMPLES)}
    for i in range(NUM_SAMPLES):
        original, loaded = synthetic_record(i), reopened.read(sample_id(i))
        assert (loaded.text, loaded.phrases, loaded.spans) == (original.text, original.phrases, original.spans)
        assert loaded.image_size == original.image_size and loaded.meta == original.meta
        assert loaded.maps.keys() == original.maps.keys()
        for kind, m in original.maps.items():
            assert loaded.maps[kind].dtype == torch.float32
            torch.testing.assert_close(loaded.maps[kind], m, atol=1e-3, rtol=1e-3)  # float16 rounding
            fast = reopened.maps(sample_id(i), len(original.phrases) - 1)[kind]
            assert fast.dtype == torch.float16 and torch.equal(fast, m[-1].half())
        for h_loaded, h in zip(loaded.hidden, original.hidden, strict=True):
            torch.testing.assert_close(h_loaded, h, atol=1e-2, rtol=1e-3)
        assert torch.equal(loaded.image_mass, original.image_mass)  # kept in float32
        assert loaded.key_norms.keys() == original.key_norms.keys()
        for kind, n in original.key_norms.items():
            torch.testing.assert_close(loaded.key_norms[kind], n, atol=1e-2, rtol=1e-3)

    manifest = reopened.manifest
    assert list(manifest["sample_id"]) == sorted(manifest["sample_id"])  # sorted, though recorded shuffled
    assert len(manifest) == sum(len(synthetic_record(i).phrases) for i in range(NUM_SAMPLES))
    row = manifest[(manifest.sample_id == sample_id(2)) & (manifest.phrase_index == 1)].iloc[0]
    assert (row.phrase, row.split, row.mask_ref) == ("blue circle", "train", "masks/2_1.png")
    assert row.shape_tiles == (3, 2, 12, 12) and row.shape_hidden == (2, 4, 8)
    assert (row.maps_dtype, row.hidden_dtype) == ("float16", "float16")
    sizes = reopened.bytes_per_phrase()
    assert sizes["maps_global"] == 3 * 2 * 6 * 6 * 2  # every phrase has a float16 global map
    on_disk = sum(p.stat().st_size for p in reopened.shards.folder.glob("*.safetensors"))
    assert sizes["total"] == pytest.approx(on_disk / len(manifest)) and sizes["overhead"] > 0
    assert store.verify() == []
    with pytest.raises(KeyError, match="nope"):
        reopened.read("nope")
    with pytest.raises(IndexError):
        reopened.maps(sample_id(0), 1)  # sample 0 has one phrase

    exact = Store.create(tmp_path / "f32", {"model": "synthetic"}, maps_dtype="float32", hidden_dtype="float32")
    with exact.writer(shard_size=4) as w:
        w.add("a", synthetic_record(4))
    loaded, original = exact.read("a"), synthetic_record(4)
    assert all(torch.equal(loaded.maps[k], original.maps[k]) for k in original.maps)
    assert torch.equal(loaded.hidden[-1], original.hidden[-1])


def test_create_refuses_mixed_configs_and_bad_values(tmp_path):
    Store.create(tmp_path, {"model": "a"})
    with pytest.raises(FileExistsError):
        Store.create(tmp_path, {"model": "a"})
    with pytest.raises(ValueError, match="another config"):
        Store.create(tmp_path, {"model": "b"}, exist_ok=True)
    store = Store.create(tmp_path, {"model": "a"}, exist_ok=True)
    big = synthetic_record(1)
    big.hidden[0] = big.hidden[0] * 1e5  # beyond float16's 65504
    with store.writer() as w:
        with pytest.raises(ValueError, match="overflows"):
            w.add("big", big)
        with pytest.raises(ValueError, match="clashes"):
            w.add("x", synthetic_record(2), extra={"shard": "mine"})
        with pytest.raises(RuntimeError, match="another process"):
            with store.writer(rank=0):  # a second live writer of the same rank would overwrite shards
                pass


def test_killed_job_resumes_to_the_same_store(tmp_path):
    reference = record_job(tmp_path / "ref", job_order())

    root = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPER.parents[1]), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, str(HELPER), str(root), "--delay", "0.3"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while len(list((root / "shards").glob("*.manifest.parquet"))) < 2:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child wrote no shards in time"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    killed = Store.open(root)
    assert 2 <= len(killed.manifest["shard"].unique()) < len(reference.manifest["shard"].unique())

    resumed = record_job(root, job_order())
    assert_same_store(resumed, reference)
    assert shard_files(resumed) == shard_files(reference)
    assert not list(root.rglob("*.tmp-*"))


def test_crash_between_shard_and_fragment_is_invisible_and_cleaned(tmp_path):
    reference = record_job(tmp_path / "ref", job_order())
    root = tmp_path / "crashed"
    store = record_job(root, job_order())
    last = store.shards.shards()[-1]
    store.shards.fragment_path(last).unlink()  # killed after the shard's rename, before its fragment's
    (store.shards.folder / f"{last}.tmp-999999").write_bytes(b"half a shard")  # killed mid-write
    assert store.done_ids() < reference.done_ids()

    resumed = record_job(root, job_order())
    assert_same_store(resumed, reference)
    assert shard_files(resumed) == shard_files(reference)
    assert not list(root.rglob("*.tmp-*"))


def test_truncated_shard_is_named_and_rerecorded(tmp_path):
    reference = record_job(tmp_path / "ref", job_order())
    store = record_job(tmp_path / "store", job_order())
    bad = store.manifest.loc[store.manifest["sample_id"] == sample_id(5), "shard"].iloc[0]
    path = store.shards.folder / bad
    path.write_bytes(path.read_bytes()[:-100])

    fresh = Store.open(store.root)
    with pytest.raises(StoreCorruptionError, match=bad) as err:
        fresh.read(sample_id(5))
    assert err.value.shard == path and "truncated" in str(err.value) and "Re-record" in str(err.value)
    with pytest.raises(StoreCorruptionError, match=bad):
        fresh.maps(sample_id(5), 0)
    fresh.read(fresh.manifest.loc[fresh.manifest["shard"] != bad, "sample_id"].iloc[0])  # others stay readable
    assert fresh.verify() == [bad]

    fresh.discard_shard(bad)
    assert sample_id(5) not in fresh.done_ids()
    rerecorded = record_job(store.root, job_order())
    assert rerecorded.verify() == []
    assert_same_store(rerecorded, reference, same_placement=False)  # same content, the shard got a new number


def test_flipped_byte_is_detected(tmp_path):
    store = record_job(tmp_path, job_order())
    shard = store.shards.shards()[1]
    path = store.shards.folder / shard
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # inside the last tensor's float16 bits: same size, plausible values
    path.write_bytes(bytes(data))

    fresh = Store.open(tmp_path)
    victim = fresh.manifest.loc[fresh.manifest["shard"] == shard, "sample_id"].iloc[0]
    with pytest.raises(StoreCorruptionError, match=f"{shard}.*sha256"):
        fresh.read(victim)
    assert fresh.verify() == [shard]


def test_two_ranks_consolidate_like_one(tmp_path):
    one = record_job(tmp_path / "one", job_order())
    one.consolidate()

    root = tmp_path / "two"
    order = job_order()
    record_job(root, order[1::2], rank=1)  # a later rank may finish first
    record_job(root, order[::2], rank=0)
    two = Store.open(root)
    assert_same_store(two, one, same_placement=False)  # read from fragments, before consolidating
    assert {s[:5] for s in two.shards.shards()} == {"r0000", "r0001"}

    consolidated = two.consolidate()
    assert (root / "manifest.parquet").exists()
    pd.testing.assert_frame_equal(Store.open(root).manifest, consolidated)
    assert_same_store(Store.open(root), one, same_placement=False)

    # A rank rerun alone after dying adds its missing shard; the stale consolidated manifest is not used.
    victim = two.shards.shards()[-1]
    two.discard_shard(victim)
    record_job(root, order[1::2], rank=1)
    assert_same_store(Store.open(root), one, same_placement=False)

    store = Store.open(root)
    with store.writer(rank=2) as a, store.writer(rank=3) as b:  # concurrent ranks given overlapping samples
        a.add("dup", synthetic_record(0))
        b.add("dup", synthetic_record(0))
    with pytest.raises(ValueError, match="more than once"):
        Store.open(root).consolidate()


def test_embedding_cache_round_trip(tmp_path):
    embeddings = {f"sha{i}": torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(5)}
    with EmbeddingCache(tmp_path, shard_size=2) as cache:
        for image_id, e in embeddings.items():
            assert cache.put(image_id, e, {"encoder": "sam_vit_b", "size": 1024})
        assert not cache.put("sha0", embeddings["sha0"])  # once per image
        assert torch.equal(cache.get("sha4"), embeddings["sha4"])  # still pending
    cache = EmbeddingCache(tmp_path)
    assert all(i in cache for i in embeddings) and "nope" not in cache
    for image_id, e in embeddings.items():
        got = cache.get(image_id)
        assert got.dtype == torch.float32 and torch.equal(got, e)
    assert cache.meta("sha3") == {"encoder": "sam_vit_b", "size": 1024}
    assert list(cache.manifest["image_id"]) == sorted(embeddings)
    assert len(cache.shards.shards()) == 3 and cache.verify() == []
    with pytest.raises(KeyError):
        cache.get("nope")


def test_embedding_cache_corruption_detected(tmp_path):
    with EmbeddingCache(tmp_path, shard_size=2) as cache:
        for i in range(4):
            cache.put(f"img{i}", torch.full((2, 3), float(i)).half())
    first, second = EmbeddingCache(tmp_path).shards.shards()
    flipped = tmp_path / "shards" / first
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0x40
    flipped.write_bytes(bytes(data))
    truncated = tmp_path / "shards" / second
    truncated.write_bytes(truncated.read_bytes()[:-3])

    cache = EmbeddingCache(tmp_path)
    with pytest.raises(StoreCorruptionError, match=first):
        cache.get("img0")
    with pytest.raises(StoreCorruptionError, match=f"{second}.*truncated"):
        cache.get("img3")
    assert cache.verify() == [first, second]
    cache.discard_shard(first)
    assert "img0" not in cache and "img3" in cache


def test_a_damaged_manifest_fragment_or_manifest_is_named(tmp_path):
    store = record_job(tmp_path / "store", job_order())
    store.consolidate()
    (store.root / "manifest.parquet").write_bytes(b"not parquet")  # the fragments are the truth: read instead
    assert Store.open(store.root).done_ids() == {sample_id(i) for i in range(NUM_SAMPLES)}
    shard = store.shards.shards()[0]
    fragment = store.shards.fragment_path(shard)
    intact = fragment.read_bytes()
    fragment.write_bytes(intact[:40])
    with pytest.raises(StoreCorruptionError, match=f"{shard}: its manifest fragment .* cannot be read") as err:
        Store.open(store.root).done_ids()
    assert "discard_shard" in str(err.value)
    # A fragment changed into another valid parquet file (a row's span moved), its old digest kept: caught too.
    fragment.write_bytes(intact)
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(fragment)
    spans = table.column("span_end").to_pylist()
    changed = table.set_column(table.column_names.index("span_end"), "span_end", pa.array([spans[0] + 1] + spans[1:], table.schema.field("span_end").type))
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), fragment)
    with pytest.raises(StoreCorruptionError, match=f"{shard}: its manifest fragment .* does not match its sha256"):
        Store.open(store.root).done_ids()
