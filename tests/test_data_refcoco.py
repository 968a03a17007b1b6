"""RefCOCO family loader, COCO masks and the restricted unpickler, on tiny files in the published formats."""

from __future__ import annotations

import os
import pickle
from collections import Counter

import numpy as np
import pytest

from flmm_probe.data.coco_masks import MaskFormatError, segmentation_to_mask
from flmm_probe.data.refcoco import RefCOCO
from flmm_probe.data.safe_pickle import UnsafePickleError, safe_load, safe_loads
from formats import compressed_rle, rect, uncompressed_rle, write_refcoco


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_refcoco(tmp_path_factory.mktemp("refer"))


@pytest.mark.parametrize(
    ("split", "mode", "count"),
    [("val", "select_first", 2), ("val", "all", 3), ("val", "concat", 2), ("val", "image", 1),
     ("testA", "select_first", 1), ("testA", "all", 3), ("testB", "select_first", 1), ("train", "select_first", 1)],
)
def test_counts_per_split_and_mode(files, split, mode, count):
    dataset = RefCOCO(files.root, "refcoco", split, text_mode=mode)
    samples = list(dataset)
    assert len(dataset) == len(samples) == count
    assert dataset.bad == []


@pytest.mark.parametrize("mode", ["select_first", "all", "concat", "image"])
@pytest.mark.parametrize("split", ["val", "testA", "testB", "train"])
def test_masks_match_what_was_drawn(files, split, mode):
    # Covers polygons (11, L-shaped 13, two-part 22), uncompressed RLE (12) and compressed RLE (21).
    for sample in RefCOCO(files.root, "refcoco", split, text_mode=mode):
        masks = sample.masks()
        assert masks.dtype == bool and masks.shape == (len(sample.phrases), *sample.image_size)
        for phrase, mask in zip(sample.phrases, masks):
            np.testing.assert_array_equal(mask, files.masks[phrase.attributes["ann_id"]])


def test_select_first_takes_the_first_expression_of_each_ref(files):
    samples = list(RefCOCO(files.root, "refcoco", "val"))
    assert [s.sample_id for s in samples] == ["refcoco(unc)/val/ref/101", "refcoco(unc)/val/ref/102"]
    first = samples[0]
    assert first.text == "man on the left"  # raw, lower-cased
    assert [(p.start, p.end) for p in first.phrases] == [(0, len(first.text))]
    assert first.image_path == files.images[1] and first.image_size == (40, 60)
    assert first.image().size == (60, 40)
    assert first.attributes == {"dataset": "refcoco", "split": "val", "split_by": "unc", "text_mode": "select_first",
                                "image_id": 1, "ref_ids": [101], "ann_ids": [11]}
    assert first.phrases[0].attributes == {"ref_id": 101, "ann_id": 11, "sent_id": 1000, "category_id": 1}
    assert (first.phrases[0].plural, first.phrases[0].is_thing) == (False, True)


def test_all_mode_gives_one_sample_per_expression(files):
    samples = list(RefCOCO(files.root, "refcoco", "testA", text_mode="all"))
    assert [s.text for s in samples] == ["two boxes", "the pair", "both of them"]
    assert len({s.sample_id for s in samples}) == 3


def test_concat_joins_all_expressions_of_one_object(files):
    samples = list(RefCOCO(files.root, "refcoco", "testA", text_mode="concat"))
    assert len(samples) == 1
    sample = samples[0]
    assert sample.text == "two boxes. the pair. both of them"
    assert [sample.text[p.start:p.end] for p in sample.phrases] == ["two boxes", "the pair", "both of them"]
    assert sample.sample_id == "refcoco(unc)/testA/ref/103/concat"
    assert all((m == files.masks[21]).all() for m in sample.masks())


def test_image_mode_joins_one_expression_per_object(files):
    (sample,) = RefCOCO(files.root, "refcoco", "val", text_mode="image")
    assert sample.text == "man on the left. round thing"
    assert [p.text for p in sample.phrases] == [sample.text[p.start:p.end] for p in sample.phrases]
    np.testing.assert_array_equal(sample.masks(), np.stack([files.masks[11], files.masks[12]]))


def test_sample_ids_are_stable_across_loads(files):
    ids = [s.sample_id for s in RefCOCO(files.root, "refcoco", "val", text_mode="all")]
    assert ids == [s.sample_id for s in RefCOCO(files.root, "refcoco", "val", text_mode="all")]
    assert ids == ["refcoco(unc)/val/sent/1000", "refcoco(unc)/val/sent/1001", "refcoco(unc)/val/sent/1002"]


def test_refcocog_umd_splits_and_image_dir_parameter(tmp_path):
    files = write_refcoco(tmp_path, dataset="refcocog", split_by="umd")
    assert len(list(RefCOCO(tmp_path, "refcocog", "val"))) == 2
    (test,) = RefCOCO(tmp_path, "refcocog", "test", image_dir=files.image_dir)
    assert test.text == "left man"
    with pytest.raises(ValueError, match="no split 'testA'"):
        RefCOCO(tmp_path, "refcocog", "testA")
    with pytest.raises(ValueError, match="text_mode"):
        RefCOCO(tmp_path, "refcocog", "val", text_mode="random")


def test_bad_samples_are_counted_not_fatal(tmp_path):
    files = write_refcoco(tmp_path, bad=True)
    dataset = RefCOCO(tmp_path, "refcoco", "val")
    assert len(dataset) == 5  # the ref with an unknown ann_id never becomes a sample
    good = list(dataset)
    assert [s.sample_id for s in good] == ["refcoco(unc)/val/ref/101", "refcoco(unc)/val/ref/102"]
    assert dataset.bad_counts() == Counter({"unknown annotation": 1, "missing image": 1, "unreadable image": 1, "empty mask": 1})
    by_id = {b.sample_id: b.kind for b in dataset.bad}
    assert by_id == {"refcoco(unc)/val/ref/110": "unknown annotation", "refcoco(unc)/val/ref/107": "missing image",
                     "refcoco(unc)/val/ref/108": "unreadable image", "refcoco(unc)/val/ref/109": "empty mask"}
    list(dataset)  # a second pass records its problems afresh instead of piling them up
    assert len(dataset.bad) == 4
    assert files.masks[23].sum() == 0


class _RunsCode:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    write_refcoco(tmp_path)
    marker = tmp_path / "pwned"
    payload = [{"ref_id": 1, "split": "val", "sentences": [], "hook": _RunsCode(f"touch {marker}")}]
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"asks to load (posix|nt|os)\.system; only builtin containers"):
        RefCOCO(tmp_path, "refcoco", "val")
    assert not marker.exists()


@pytest.mark.parametrize("target", [eval, getattr, __import__])
def test_builtin_callables_are_refused_too(target):
    class Evil:
        def __reduce__(self):
            return (target, ("1",) if target is not getattr else (1, "real"))

    with pytest.raises(UnsafePickleError, match=f"builtins.{target.__name__}"):
        safe_loads(pickle.dumps(Evil()))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_plain_containers_and_scalars_load(tmp_path, protocol):
    data = {"a": [1, 2.5, "x", None, True, 2**70], "b": (1, (2,)), "c": {3, 4}, "d": frozenset({5})}
    if protocol >= 3:  # older protocols rebuild bytes through _codecs.encode, which we refuse
        data["e"] = b"y"
    path = tmp_path / "plain.p"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    assert safe_load(path) == data


def test_segmentation_forms_decode_exactly():
    mask = rect(9, 11, 2, 3, 7, 9) | rect(9, 11, 0, 0, 1, 1)
    np.testing.assert_array_equal(segmentation_to_mask(uncompressed_rle(mask), 9, 11), mask)
    np.testing.assert_array_equal(segmentation_to_mask(compressed_rle(mask), 9, 11), mask)
    np.testing.assert_array_equal(segmentation_to_mask([[3, 2, 9, 2, 9, 7, 3, 7]], 9, 11), rect(9, 11, 2, 3, 7, 9))
    with pytest.raises(MaskFormatError, match="differs from the image size"):
        segmentation_to_mask(uncompressed_rle(mask), 10, 11)
    with pytest.raises(MaskFormatError, match="polygon"):
        segmentation_to_mask([[1, 2, 3]], 9, 11)
    # A degenerate part (two points) adds nothing and must not turn the polygons into boxes.
    np.testing.assert_array_equal(segmentation_to_mask([[0, 0, 5, 5], [3, 2, 9, 2, 9, 7, 3, 7]], 9, 11), rect(9, 11, 2, 3, 7, 9))
    assert not segmentation_to_mask([[0, 0, 5, 5]], 9, 11).any()
    with pytest.raises(MaskFormatError, match="unknown segmentation format"):
        segmentation_to_mask("not a mask", 9, 11)
