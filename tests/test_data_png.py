"""PNG loader on a tiny narrative file + COCO panoptic json + panoptic PNG in the published formats."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from flmm_probe.data.coco_masks import id_to_rgb, panoptic_ids
from flmm_probe.data.png import PNGDataset
from formats import FLOOR, PERSON_A, PERSON_B, WALL, write_png


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_png(tmp_path_factory.mktemp("png"))


@pytest.fixture(scope="module")
def samples(files):
    dataset = PNGDataset.from_root(files.root, "val")
    out = list(dataset)
    assert dataset.bad == []
    return out


def test_one_sample_per_narrative_with_stable_ids(samples, files):
    assert [s.sample_id for s in samples] == ["png/val/139/0", "png/val/139/1"]
    first = samples[0]
    assert first.text == files.narratives[0]["caption"]
    assert first.image_path == files.images[139] and first.image_size == (24, 32)
    assert first.attributes == {"dataset": "png", "split": "val", "image_id": 139, "annotator_id": 7}


def test_phrase_spans_in_reading_order(samples):
    sample = samples[0]
    texts = [sample.text[p.start:p.end] for p in sample.phrases]
    assert texts == [p.text for p in sample.phrases] == ["a person", "another person", "the floor", "them", "a wall", "person"]
    # The last "person" is the one after "The", not an earlier occurrence.
    assert sample.phrases[-1].start == sample.text.index("The person") + len("The ")
    starts = [p.start for p in sample.phrases]
    assert starts == sorted(starts)
    assert sample.spans == [(p.start, p.end) for p in sample.phrases]


def test_masks_are_unions_of_segments(samples, files):
    seg = files.segment_masks
    expected = [seg[PERSON_A], seg[PERSON_B], seg[FLOOR], seg[PERSON_A] | seg[PERSON_B], seg[WALL], seg[PERSON_A]]
    masks = samples[0].masks()
    assert masks.dtype == bool and masks.shape == (6, 24, 32)
    np.testing.assert_array_equal(masks, np.stack(expected))
    np.testing.assert_array_equal(samples[1].masks(), seg[WALL][None])


def test_plural_and_thing_stuff_flags(samples):
    phrases = samples[0].phrases
    assert [p.plural for p in phrases] == [False, False, False, True, False, False]
    assert [p.is_thing for p in phrases] == [True, True, False, True, False, True]
    assert phrases[3].attributes == {"segment_ids": [PERSON_A, PERSON_B], "category_ids": [1, 1], "noun": True}


def test_bad_samples_are_counted_not_fatal(tmp_path):
    write_png(tmp_path, bad=True)
    dataset = PNGDataset.from_root(tmp_path, "val")
    assert len(dataset) == 4  # unknown segment id and no grounded phrase are caught while indexing
    good = list(dataset)
    assert [s.sample_id for s in good] == ["png/val/139/0", "png/val/139/1"]
    assert dataset.bad_counts() == Counter({"unknown segment id": 1, "no grounded phrase": 1, "empty mask": 1, "missing image": 1})
    assert {b.sample_id: b.kind for b in dataset.bad} == {
        "png/val/139/2": "unknown segment id", "png/val/139/4": "no grounded phrase",
        "png/val/139/3": "empty mask", "png/val/285/0": "missing image",
    }


def test_missing_panoptic_png_is_a_bad_sample(tmp_path):
    write_png(tmp_path)
    (tmp_path / "coco" / "panoptic_val2017" / "000000000139.png").unlink()
    dataset = PNGDataset.from_root(tmp_path, "val")
    assert list(dataset) == []
    assert dataset.bad_counts() == Counter({"missing panoptic png": 2})


def test_panoptic_rgb_encoding_round_trips(tmp_path):
    from PIL import Image

    ids = np.array([[0, 1, 255], [256, 3226956, 256**3 - 1]])
    Image.fromarray(id_to_rgb(ids)).save(tmp_path / "ids.png")
    np.testing.assert_array_equal(panoptic_ids(tmp_path / "ids.png"), ids)


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no split 'test'"):
        PNGDataset.from_root(tmp_path, "test")
