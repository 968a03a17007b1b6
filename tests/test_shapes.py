"""The shapes world: determinism, exact masks, phrase spans, splits."""

from __future__ import annotations

import numpy as np
import pytest

from flmm_probe.data.shapes import (
    COLOURS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    NUMBERS,
    PLURALS,
    ShapesDataset,
    make_scene,
    vocabulary,
)

SCENES = [make_scene("train", i) for i in range(150)]


def _same(a, b) -> bool:
    return (
        np.array_equal(a.image, b.image)
        and a.caption == b.caption
        and a.narrative == b.narrative
        and [e.text for e in a.expressions] == [e.text for e in b.expressions]
        and [(q.question, q.answer) for q in a.qa] == [(q.question, q.answer) for q in b.qa]
        and all(np.array_equal(o.mask, p.mask) for o, p in zip(a.objects, b.objects))
    )


def test_deterministic_and_seeded():
    for i in (0, 7, 123):
        assert _same(make_scene("val", i, seed=3), make_scene("val", i, seed=3))
    assert not np.array_equal(make_scene("val", 0).image, make_scene("val", 1).image)
    assert not np.array_equal(make_scene("val", 0).image, make_scene("test", 0).image)
    assert not np.array_equal(make_scene("val", 0, seed=0).image, make_scene("val", 0, seed=1).image)


def test_scene_contents():
    counts = {len(s.objects) for s in SCENES}
    assert counts == {1, 2, 3, 4, 5}
    for s in SCENES:
        assert s.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and s.image.dtype == np.uint8
        xs = [o.cx for o in s.objects]
        assert xs == sorted(xs), "objects are listed left to right"
        for o in s.objects:
            assert o.mask.shape == (IMAGE_SIZE, IMAGE_SIZE) and o.mask.dtype == bool and o.mask.any()


def test_masks_agree_with_pixels():
    for s in SCENES[:60]:
        things = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
        for o in s.objects:
            colour = np.array(COLOURS[o.colour])
            diff = np.abs(s.image.astype(int) - colour).max(axis=-1)
            assert (diff[o.mask] <= 10).all(), "every mask pixel has the object's colour"
            assert not (things & o.mask).any(), "objects do not overlap"
            things |= o.mask
            # The one-pixel ring around the object is background, never the object's colour.
            grown = o.mask.copy()
            grown[1:] |= o.mask[:-1]
            grown[:-1] |= o.mask[1:]
            grown[:, 1:] |= o.mask[:, :-1]
            grown[:, :-1] |= o.mask[:, 1:]
            ring = grown & ~o.mask
            assert (diff[ring] > 10).all()
        stuff = np.logical_or.reduce(list(s.stuff_masks.values()))
        assert not (stuff & things).any() and (stuff | things).all(), "stuff and things tile the image"


def test_phrases_are_exact_spans_with_masks():
    for s in SCENES:
        for text, phrases in ((s.caption, s.caption_phrases), (s.narrative, s.narrative_phrases)):
            for p in phrases:
                assert text[p.start : p.end] == p.text and p.mask.any()
                if p.is_thing:
                    union = np.logical_or.reduce([s.objects[i].mask for i in p.object_ids])
                    assert np.array_equal(union, p.mask)
                    assert p.plural == (len(p.object_ids) > 1)
                    if p.plural:
                        assert p.text.split()[0] == NUMBERS[len(p.object_ids)] and p.text.split()[-1] in PLURALS.values()
        assert len(s.caption_phrases) == len(s.objects)
        assert {p.is_thing for p in s.narrative_phrases} == {True, False}
    assert any(p.plural for s in SCENES for p in s.narrative_phrases)


def test_expressions_single_out_their_target():
    kinds = set()
    for s in SCENES:
        for e in s.expressions:
            kinds.add(e.kind)
            target = s.objects[e.target]
            assert np.array_equal(e.mask, target.mask)
            words = e.text.split()
            assert target.shape in words[:4]
            if e.kind == "attribute":
                keys = [k for k in ("size", "colour", "shape") if getattr(target, k) in words]
                matching = [o for o in s.objects if all(getattr(o, k) == getattr(target, k) for k in keys)]
                assert matching == [target]
    assert kinds == {"attribute", "relational", "superlative"}


def test_questions_are_answered_by_the_scene():
    for s in SCENES:
        for qa in s.qa:
            words = qa.question.rstrip("?").split()
            if qa.kind == "colour":
                assert [o.colour for o in s.objects if o.shape == words[-1]] == [qa.answer]
            elif qa.kind == "count":
                shape = next(k for k, v in PLURALS.items() if v == words[2])
                assert NUMBERS[sum(o.shape == shape for o in s.objects)] == qa.answer
            elif qa.kind == "exists":
                present = any((o.colour, o.shape) == (words[-2], words[-1]) for o in s.objects)
                assert qa.answer == ("yes" if present else "no")


def test_inventory_names_each_object_by_shape_then_colour_and_size():
    for s in SCENES:
        items = s.inventory.rstrip(".").split(", ")
        assert items == [f"the {o.shape} is {o.colour} and {o.size}" for o in s.objects]


def test_compositional_split_is_held_out():
    for split in ("train", "val", "test"):
        for i in range(200):
            assert not any((o.colour, o.shape) in HELD_OUT_PAIRS for o in make_scene(split, i).objects)
    for i in range(100):
        assert any((o.colour, o.shape) in HELD_OUT_PAIRS for o in make_scene("compositional", i).objects)


def test_vocabulary_covers_every_text():
    vocab = set(vocabulary())
    for s in SCENES:
        texts = [s.caption, s.narrative, s.inventory] + [e.text for e in s.expressions] + [q.question + " " + q.answer for q in s.qa]
        for t in texts:
            assert set(t.replace(",", " , ").replace(".", " . ").replace("?", " ? ").split()) <= vocab, t


def test_dataset_and_errors():
    ds = ShapesDataset("test", 5, seed=2)
    assert len(ds) == 5 and len(list(ds)) == 5
    assert _same(ds[3], make_scene("test", 3, seed=2))
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="unknown split"):
        make_scene("training", 0)
