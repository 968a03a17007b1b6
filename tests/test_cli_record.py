"""The record command: one process vs torchrun with two ranks give the same store."""

import shutil
import subprocess
import sys

import torch

from flmm_probe.store import Store, location_columns

from tiny import tiny_llava

DATA = "shapes:test:3:mix"


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    model, processor = tiny_llava()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    args = ["record", "--backbone", str(tmp_path / "model"), "--data", DATA, "--batch-size", "1", "--shard-size", "2"]  # batch 1: identical arithmetic per sample
    subprocess.run([sys.executable, "-m", "flmm_probe.cli", *args, "--store", str(tmp_path / "one")], check=True)
    torchrun = [shutil.which("torchrun") or "torchrun", "--nproc_per_node", "2", "--master_port", "29731"]
    subprocess.run([*torchrun, "-m", "flmm_probe.cli", *args, "--store", str(tmp_path / "two")], check=True)
    one, two = Store.open(tmp_path / "one"), Store.open(tmp_path / "two")
    assert (tmp_path / "two" / "manifest.parquet").exists()
    a, b = one.manifest, two.manifest
    assert a.drop(columns=location_columns(a)).equals(b.drop(columns=location_columns(b)))
    assert {s.split("-")[0] for s in b["shard"]} == {"r0000", "r0001"}
    for sample_id in a["sample_id"].unique():
        ra, rb = one.read(sample_id), two.read(sample_id)
        assert all(torch.equal(ra.maps[k], rb.maps[k]) for k in ra.maps)
