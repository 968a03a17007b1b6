"""Recording a dataset into a store: resume, rank split, bad samples counted and good ones kept."""

import numpy as np
from PIL import Image
from tokenizers import normalizers

from flmm_probe import load_backbone
from flmm_probe.data.samples import GroundingDataset, GroundingSample, SamplePhrase
from flmm_probe.data.sources import ShapesGrounding
from flmm_probe.record_job import record_dataset
from flmm_probe.store import Store

from tiny import tiny_llava


class WithBadSamples(GroundingDataset):
    """Three shapes samples, one whose phrase the tokenizer drops, one with an empty mask."""

    def __init__(self):
        super().__init__()
        self.good = list(ShapesGrounding("test", 2, "png"))
        self._entries = ["good0", "lost", "empty", "good1"]

    def _build(self, entry):
        if entry.startswith("good"):
            return self.good[int(entry[-1])]
        image = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
        mask = np.zeros((1, 32, 32), bool) if entry == "empty" else np.ones((1, 32, 32), bool)
        text = "a red circle" if entry == "empty" else "a \u200b circle"  # the phrase is the zero-width space alone
        start = 2 if entry == "lost" else 0
        end = 3 if entry == "lost" else len(text)
        return GroundingSample(entry, None, (32, 32), text, [SamplePhrase(text[start:end], start, end)], {}, lambda: mask, lambda: image)


def test_record_resume_and_ranks(tmp_path):
    model, processor = tiny_llava()
    backbone = load_backbone(model, processor)
    dataset = ShapesGrounding("test", 3, "mix")
    store = Store.create(tmp_path / "one", {"model": "tiny"})
    report = record_dataset(backbone, dataset, store, batch_size=2, progress=False)
    assert report.recorded == len(dataset) and not report.bad
    again = record_dataset(backbone, dataset, store, batch_size=2, progress=False)
    assert again.recorded == 0 and again.already_stored == len(dataset)
    manifest = store.manifest
    assert set(manifest["sample_dataset"]) == {"shapes"} and set(manifest["sample_task"]) == {"res", "png"}
    assert manifest["is_thing"].notna().all()

    split = Store.create(tmp_path / "two", {"model": "tiny"})
    for rank in (0, 1):
        record_dataset(backbone, dataset, split, batch_size=2, rank=rank, world_size=2, progress=False)
    assert split.done_ids() == store.done_ids()
    sample = manifest["sample_id"].iloc[0]
    assert (split.read(sample).maps["global"] - store.read(sample).maps["global"]).abs().max() < 1e-6


def test_bad_samples_are_counted_and_good_ones_kept(tmp_path):
    model, processor = tiny_llava()
    # Real tokenizers normalise some characters away; here the zero-width space disappears.
    processor.tokenizer._tokenizer.normalizer = normalizers.Replace("\u200b", "")
    dataset = WithBadSamples()
    store = Store.create(tmp_path / "s", {"model": "tiny"})
    report = record_dataset(load_backbone(model, processor), dataset, store, batch_size=4, progress=False)
    assert report.recorded == 2
    assert report.bad == {"empty mask": 1, "phrase lost by the tokenizer": 1}
    assert store.done_ids() == {s.sample_id for s in dataset.good}


def test_a_mixture_records_into_one_store(tmp_path):
    from flmm_probe.data.sources import open_dataset

    model, processor = tiny_llava()
    mixture = open_dataset("shapes:test:2:res,shapes:val:1:png")
    store = Store.create(tmp_path / "mix", {"model": "tiny"})
    report = record_dataset(load_backbone(model, processor), mixture, store, batch_size=4, progress=False)
    assert report.recorded == len(mixture) and set(store.manifest["sample_split"]) == {"test", "val"}
