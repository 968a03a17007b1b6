"""record -> fit -> evaluate through the CLI on tiny RefCOCO and PNG files in their published formats,
with the organism: counts, spans and bad samples asserted."""

import json

import pandas as pd
import pytest

from flmm_probe.cli import main
from flmm_probe.store import Store

from formats import write_png, write_refcoco


def run(capsys, *argv):
    assert main([*argv]) == 0
    return capsys.readouterr().out


def test_refcoco_and_png_end_to_end(tmp_path, capsys):
    refer, png = write_refcoco(tmp_path / "refer", bad=True), write_png(tmp_path / "png", bad=True)
    res_spec, png_spec = f"refcoco:{refer.root}:val", f"png:{png.root}:val"

    report = json.loads(run(capsys, "record", "--data", res_spec, "--store", str(tmp_path / "res")).splitlines()[-1])
    # val: refs 101, 102 are good (select_first: one sample each); 107-110 are bad, counted, not fatal.
    assert report["recorded"] == 2
    assert report["bad"] == {"missing image": 1, "unreadable image": 1, "empty mask": 1, "unknown annotation": 1}
    manifest = Store.open(tmp_path / "res").manifest
    firsts = {ref["ref_id"]: ref["sentences"][0]["raw"].lower() for ref in refer.refs}
    assert sorted(manifest["phrase"]) == sorted([firsts[101], firsts[102]])
    assert (manifest["span_start"] == 0).all() and (manifest["span_end"] == manifest["phrase"].str.len()).all()

    report = json.loads(run(capsys, "record", "--data", png_spec, "--store", str(tmp_path / "png_store")).splitlines()[-1])
    assert report["recorded"] == 2 and sum(report["bad"].values()) == 4

    fit = ["fit", "--store", str(tmp_path / "res"), "--data", res_spec, "--out", str(tmp_path / "fit"), "--epochs", "1", "--batch-size", "2",
           "--base-channels", "8", "--long-side", "32", "--log-maps"]
    run(capsys, *fit)
    unet = json.loads((tmp_path / "fit" / "grounder.json").read_text())["config"]
    assert (unet["base_channels"], unet["long_side"], unet["log_maps"]) == (8, 32, True)
    weights = (tmp_path / "fit" / "grounder.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        run(capsys, *fit)
    run(capsys, *fit, "--resume")  # the fit is finished: nothing left to train
    assert (tmp_path / "fit" / "grounder.safetensors").read_bytes() == weights
    table = run(capsys, "evaluate", "--run", str(tmp_path / "fit"), "--store", str(tmp_path / "res"), "--data", res_spec)
    assert "cIoU" in table
    per_phrase = pd.read_parquet(tmp_path / "fit" / "per_phrase.parquet")
    assert len(per_phrase) == 2 and per_phrase["iou_refined"].between(0, 1).all()

    out = tmp_path / "png_eval"
    table = run(capsys, "evaluate", "--run", str(tmp_path / "fit"), "--store", str(tmp_path / "png_store"), "--data", png_spec, "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(next(iter(metrics["png"].values()))["refined"]) >= {"all", "things", "stuff", "singular", "plural"}
    assert len(pd.read_parquet(out / "per_phrase.parquet")) == int(Store.open(tmp_path / "png_store").manifest.shape[0])
