"""Pooling a phrase's tokens: "last" keeps the last token's map; `record --pooling` stores it, `fit` follows the store."""

import json

import pytest
import torch

from flmm_probe import load_backbone
from flmm_probe.cli import main
from flmm_probe.data.sources import open_dataset
from flmm_probe.phrases import pool
from flmm_probe.store import Store

DATA = "shapes:test:2:mix"


def test_pool_last_takes_each_phrases_last_token():
    maps = torch.arange(24.0).reshape(2, 3, 4)  # (head, query, key)
    groups = [torch.tensor([0, 2]), torch.tensor([1])]
    merged = pool(maps, groups, "last")
    assert torch.equal(merged[0], maps[:, 2]) and torch.equal(merged[1], maps[:, 1])
    with pytest.raises(ValueError, match="mean, max, last"):
        pool(maps, groups, "first")


def test_record_last_pooling_then_fit_follows_the_store(tmp_path, capsys):
    store_dir = tmp_path / "store"
    assert main(["record", "--data", DATA, "--store", str(store_dir), "--pooling", "last"]) == 0
    store = Store.open(store_dir)
    assert store.config["pooling"] == "last"
    sample = next(iter(open_dataset(DATA)))
    stored = store.read(sample.sample_id)
    direct = load_backbone("organism").record(sample.image(), sample.text, sample.spans, pooling="last")
    assert stored.meta["pooling"] == "last"
    assert torch.equal(stored.maps["global"], direct.maps["global"].half().float())  # stored in float16, read as float32
    mean = load_backbone("organism").record(sample.image(), sample.text, sample.spans)
    assert not torch.equal(direct.maps["global"], mean.maps["global"])  # multi-token phrases differ

    # A resumed job with another pooling would mix two recordings in one store: refused.
    # (A mean-pooled store names no pooling, as the stores recorded before the option did.)
    with pytest.raises(ValueError, match="another config"):
        main(["record", "--data", DATA, "--store", str(store_dir), "--pooling", "mean"])

    assert main(["record", "--data", DATA, "--store", str(tmp_path / "mean")]) == 0
    assert "pooling" not in Store.open(tmp_path / "mean").config

    assert main(["fit", "--store", str(store_dir), "--data", DATA, "--out", str(tmp_path / "fit"), "--no-refiner",
                 "--epochs", "1", "--base-channels", "8", "--long-side", "32"]) == 0
    assert json.loads((tmp_path / "fit" / "grounder.json").read_text())["config"]["pooling"] == "last"
