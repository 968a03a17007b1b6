"""Every family end to end with the default fit: record -> fit (stacked maps, SAM refiner, text prompts) -> evaluate,
on one dataset whose images give different numbers of tiles / views (tiny random models of the real classes)."""

import numpy as np
import pytest
import torch
from PIL import Image

from flmm_probe import load_backbone
from flmm_probe.data.samples import GroundingDataset, GroundingSample, SamplePhrase
from flmm_probe.decoder import load_grounder
from flmm_probe.evaluate import evaluate
from flmm_probe.fit import FitConfig, fit
from flmm_probe.organism import load_organism_sam
from flmm_probe.record_job import record_dataset
from flmm_probe.store import Store

from test_apps_families import BUILDERS
from tiny import image

# (height, width): a small square, wide and tall images and a large one, so that tiling families give one tile
# for some and several for others.
SIZES = [(24, 24), (40, 90), (100, 50), (120, 120)]
TEXT, PHRASE = "a red circle left of the blue square", "the blue square"


class MixedSizes(GroundingDataset):
    name = "mixed"

    def __init__(self) -> None:
        super().__init__()
        self._entries = list(enumerate(SIZES))

    def _build(self, entry) -> GroundingSample:
        index, (height, width) = entry
        mask = np.zeros((height, width), bool)
        mask[height // 4 : height // 2, width // 2 : 3 * width // 4] = True
        start = TEXT.index(PHRASE)
        pixels = image(height, width, seed=index)
        return GroundingSample(f"mixed/{index}", None, (height, width), TEXT, [SamplePhrase(PHRASE, start, start + len(PHRASE))],
                               {"dataset": "mixed", "split": "val", "index": index, "task": "res"},
                               load_masks=lambda: mask[None], load_image=lambda: Image.fromarray(pixels))


def _builder(family: str):
    if family in ("idefics3", "smolvlm"):  # a processor that does not resize: the tile count follows each image's size
        def build():
            model, processor = BUILDERS[family]()
            processor.image_processor.do_resize = False
            return model, processor
        return build
    return BUILDERS[family]


@pytest.mark.parametrize("family", sorted(set(BUILDERS) | {"idefics3-no-resize", "smolvlm-no-resize"}))
def test_record_fit_evaluate_with_mixed_tiles(family, tmp_path):
    torch.manual_seed(0)
    name = family.removesuffix("-no-resize")
    model, processor = (_builder(name) if family.endswith("no-resize") else BUILDERS[name])()
    backbone = load_backbone(model, processor)
    dataset = MixedSizes()
    store = Store.create(tmp_path / "store", {"backbone": family})
    report = record_dataset(backbone, dataset, store, batch_size=2, progress=False)
    assert report.recorded == len(SIZES) and not report.bad
    store.consolidate()
    records = [store.read(f"mixed/{i}") for i in range(len(SIZES))]
    kinds = list(backbone.view_kinds)
    if "tiles" in kinds:  # the dataset does give these images different views or tile grids
        assert len({tuple(sorted((k, tuple(m.shape[-2:])) for k, m in r.maps.items())) for r in records}) > 1
    if family in ("internvl", "idefics3-no-resize", "smolvlm-no-resize"):  # some images get no "tiles" view at all
        assert {frozenset(r.maps) for r in records} == {frozenset({"global"}), frozenset({"global", "tiles"})}
    assert all(r.meta["view_kinds"] == kinds for r in records)
    # One channel layout for every image, whatever views it got: the family's kinds, zeros for an absent one.
    assert len({r.stacked(kinds=kinds).shape[1] for r in records}) == 1
    sam = load_organism_sam()
    run = fit(store, dataset, sam, FitConfig(epochs=1, batch_size=2, base_channels=8, long_side=16), tmp_path / "fit",
              progress=False)
    per_phrase, summary = evaluate(load_grounder(run, sam), store, dataset, progress=False)
    assert len(per_phrase) == len(SIZES) and per_phrase["iou_refined"].notna().all()
    assert summary["res"]["mixed/val"]["refined"]["n"] == len(SIZES)


def test_a_fit_on_one_tile_images_grounds_tiled_ones(tmp_path):
    # The channel layout is the family's, not the training store's: a grounder fitted where no image was tiled
    # still reads the "tiles" view of a tiled image.
    model, processor = BUILDERS["internvl"]()
    backbone = load_backbone(model, processor)
    small, mixed = MixedSizes(), MixedSizes()
    small._entries = small._entries[:1]  # (24, 24): one tile, a "global" view only
    train, held_out = Store.create(tmp_path / "train", {}), Store.create(tmp_path / "held_out", {})
    record_dataset(backbone, small, train, progress=False)
    record_dataset(backbone, mixed, held_out, progress=False)
    assert train.map_kinds() == ["global"] and held_out.map_kinds() == ["global", "tiles"]
    run = fit(train, small, None, FitConfig(epochs=1, use_refiner=False, base_channels=8, long_side=16), tmp_path / "fit",
              progress=False)
    per_phrase, _ = evaluate(load_grounder(run), held_out, mixed, progress=False)
    assert len(per_phrase) == len(SIZES)
