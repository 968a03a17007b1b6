"""Scoring a Grounder: hand-known IoUs through evaluate/summarize, the table, and segment + overlay on one image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flmm_probe import load_backbone
from flmm_probe.data.samples import IncompleteStoreError
from flmm_probe.data.sources import ShapesGrounding
from flmm_probe.evaluate import PALETTE, evaluate, format_table, overlay, segment, summarize
from flmm_probe.decoder import build_grounder
from flmm_probe.fit import FitConfig
from flmm_probe.organism.build import SamConfig, build_sam
from flmm_probe.record_job import record_dataset
from flmm_probe.store import Store

from tiny import tiny_llava


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


class Oracle(torch.nn.Module):
    """A Grounder stand-in: coarse logits equal the ground truth (+/-10), refined ones predict nothing."""

    refiner = None  # predict() then asks for no image embedding

    def __init__(self, samples):
        super().__init__()
        self.samples = iter(samples)  # predict() reads the stored samples in dataset order

    def ground(self, record, embedding=None, input_size=None):
        masks = torch.from_numpy(next(self.samples).masks())
        assert len(masks) == len(record.phrases)
        coarse = torch.where(masks, 10.0, -10.0)
        return coarse, torch.full_like(coarse, -10.0)


def test_evaluate_scores_known_ious(llava, tmp_path):
    dataset = ShapesGrounding("test", 2, "mix")
    store = Store.create(tmp_path / "store", {"model": "tiny"})
    record_dataset(load_backbone(*llava), dataset, store, batch_size=4, progress=False)
    samples = list(dataset)
    per_phrase, summary = evaluate(Oracle(samples), store, dataset, progress=False)
    assert summary["coverage"] == {"scored": len(samples), "in_dataset": len(samples)}
    assert not format_table(summary).startswith("PARTIAL")

    # A dataset with a sample the store lacks: refused, or scored as what it is with partial=True.
    larger = ShapesGrounding("test", 3, "mix")
    with pytest.raises(IncompleteStoreError, match="pass --partial"):
        evaluate(Oracle(list(larger)), store, larger, progress=False)
    _, part = evaluate(Oracle(samples), store, larger, progress=False, partial=True)
    assert part["coverage"] == {"scored": len(samples), "in_dataset": len(list(larger))}
    assert format_table(part).startswith(f"PARTIAL: {len(samples)} of the dataset's {len(list(larger))} samples scored")

    assert len(per_phrase) == sum(len(s.phrases) for s in samples)
    assert set(per_phrase["task"]) == {"res", "png"} and set(per_phrase["dataset"]) == {"shapes"}
    assert list(per_phrase["phrase"]) == [p.text for s in samples for p in s.phrases]
    res_kinds = per_phrase.loc[per_phrase["task"] == "res", "kind"]
    assert set(res_kinds) <= {"attribute", "relational", "superlative"} and per_phrase.loc[per_phrase["task"] == "png", "kind"].isna().all()
    assert (per_phrase["iou_coarse"] == 1).all() and (per_phrase["iou_refined"] == 0).all()
    assert (per_phrase["inter_coarse"] == per_phrase["union_coarse"]).all() and (per_phrase["inter_refined"] == 0).all()
    # the oracle's masks are the targets: a perfect prediction's intersection is the target's area
    assert (per_phrase["target_area"] == per_phrase["inter_coarse"]).all() and (per_phrase["target_area"] > 0).all()
    assert (per_phrase["union_refined"] == per_phrase["target_area"]).all()

    res = summary["res"]["shapes/test"]
    assert res["coarse"]["cIoU"] == 1 and res["coarse"]["gIoU"] == 1 and res["coarse"]["P@0.9"] == 1
    assert res["refined"]["cIoU"] == 0 and res["refined"]["P@0.5"] == 0
    assert res["coarse"]["n"] == (per_phrase["task"] == "res").sum()
    png = summary["png"]["shapes/test"]
    assert set(png["coarse"]) == {"all", "things", "stuff", "singular", "plural", "n"}
    assert png["coarse"]["all"] == pytest.approx(1, abs=1e-4) and png["refined"]["all"] == pytest.approx(0, abs=1e-4)

    # Half of the RES phrases right, half empty: cIoU weighs by area, gIoU by phrase.
    half = per_phrase.copy()
    res_rows = half.index[half["task"] == "res"]
    wrong = res_rows[1::2]
    half.loc[wrong, "inter_coarse"] = 0
    half.loc[wrong, "iou_coarse"] = 0.0
    scores = summarize(half)["res"]["shapes/test"]["coarse"]
    rows = half.loc[res_rows]
    assert scores["cIoU"] == pytest.approx(rows["inter_coarse"].sum() / rows["union_coarse"].sum())
    assert scores["gIoU"] == pytest.approx((len(res_rows) - len(wrong)) / len(res_rows))

    table = format_table(summary)
    assert "RES" in table and "PNG average recall" in table and "100.0" in table and "shapes/test" in table


def test_segment_and_overlay_end_to_end(llava):
    backbone = load_backbone(*llava)
    torch.manual_seed(0)
    sam = build_sam(SamConfig(img_size=64, patch=16, encoder_width=32, encoder_depth=1, encoder_heads=2, prompt_dim=32,
                              decoder_depth=1, decoder_heads=2, decoder_mlp=64, window=0)).eval()
    # tiny LLaVA: 3 layers x 4 heads of maps, 64-wide hidden states after each of its 3 layers
    grounder = build_grounder(FitConfig(base_channels=8, stages=2, long_side=16), 12, sam, text_dim=64, text_layers=3)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    text = "a red circle left of a blue square"
    masks, coarse, refined = segment(backbone, grounder, image, text, ["a red circle", "a blue square"])
    assert masks.shape == coarse.shape == refined.shape == (2, 40, 56) and masks.dtype == bool
    np.testing.assert_array_equal(masks, (refined > 0).numpy())

    masks = np.zeros((2, 40, 56), bool)
    masks[0, 5:35, 5:25] = True
    picture = overlay(image, masks, ["a red circle", "a blue square"], min_side=0)
    assert isinstance(picture, Image.Image) and picture.size == (56, 40)
    pixels = np.asarray(picture)
    assert tuple(pixels[30, 5]) == PALETTE[0]  # the outline (below the label) has the mask's colour
    blend = np.round(0.5 * image[30, 15] + 0.5 * np.array(PALETTE[0])).astype(np.uint8)
    assert np.abs(pixels[30, 15].astype(int) - blend).max() <= 1  # the inside is tinted
    assert (pixels[30:, 30:] == image[30:, 30:]).all()  # outside masks and labels the image is unchanged
    enlarged = np.asarray(overlay(image, masks, ["a red circle", "a blue square"], min_side=120))
    assert enlarged.shape == (120, 168, 3)  # x3, nearest neighbour: the same picture, larger
    assert (enlarged[90:, 90:] == image[30:, 30:].repeat(3, 0).repeat(3, 1)).all()
    with pytest.raises(ValueError, match="one"):
        overlay(image, masks[:1], ["a red circle", "a blue square"])
