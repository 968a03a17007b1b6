"""The shapes world: determinism, exact masks, phrase spans, splits."""

from __future__ import annotations

import numpy as np
import pytest

from flmm_probe.data.shapes import (
    COLOURS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    LAYOUTS,
    NUMBERS,
    PLURALS,
    ShapesDataset,
    layout,
    make_scene,
    reasoning_questions,
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
        assert items == [f"the {s.objects[i].shape} is {s.objects[i].colour} and {s.objects[i].size}" for i in s.order]


def test_texts_name_the_objects_in_a_random_order_not_left_to_right():
    firsts = []
    for s in SCENES:
        assert sorted(s.order) == list(range(len(s.objects)))
        assert [p.object_ids for p in s.caption_phrases] == [(i,) for i in s.order]
        things = [p.object_ids for p in s.narrative_phrases if p.is_thing]
        assert sorted(i for ids in things for i in ids) == list(range(len(s.objects)))
        assert [min(s.order.index(i) for i in ids) for ids in things] == sorted(min(s.order.index(i) for i in ids) for ids in things)
        if len(s.objects) >= 3:
            firsts.append(s.order[0])
    # The first object named is the leftmost about as often as any other: no text follows the layout.
    share = np.mean(np.array(firsts) == 0)
    assert 0.1 < share < 0.45, share


def _touches_frame(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _gap(a: np.ndarray, b: np.ndarray) -> int:
    """Background pixels between two masks along the nearest 8-connected path (0: they touch)."""
    ya, xa = np.nonzero(a)
    yb, xb = np.nonzero(b)
    return int(np.maximum(np.abs(ya[:, None] - yb[None]), np.abs(xa[:, None] - xb[None])).min()) - 1


def test_layouts_place_objects_against_the_frame_or_close_together():
    assert {layout("test", i, 0) for i in range(50)} == {"spread"}
    drawn = [layout("train", i, 0) for i in range(2000)]
    assert set(drawn) == set(LAYOUTS) and 0.7 < drawn.count("spread") / len(drawn) < 0.9
    touching = []
    for i in range(60):
        spread, edge, close = (make_scene(split, i) for split in ("test", "edge", "close"))
        touching.append(any(_touches_frame(o.mask) for o in spread.objects))
        assert any(_touches_frame(o.mask) for o in edge.objects)
        for scene in (spread, edge, close):
            gaps = [_gap(o.mask, p.mask) for k, o in enumerate(scene.objects) for p in scene.objects[k + 1:]]
            assert min(gaps, default=1) >= 1, "objects never touch"
        if len(close.objects) > 1:
            nearest = [min(_gap(o.mask, p.mask) for p in close.objects if p is not o) for o in close.objects]
            assert max(nearest) <= 6, nearest  # extents 1-2 px apart; corners and curves leave more
    assert np.mean(touching) < 0.1, "a spread scene's objects touch the frame only where a triangle's base is wider than r"


def test_compositional_split_is_held_out():
    for split in ("train", "val", "test", "edge", "close"):
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


def test_reasoning_questions_name_an_object_no_word_of_theirs_names():
    kinds = set()
    for s in SCENES:
        for r in reasoning_questions(s.objects):
            kinds.add(r.kind)
            target = s.objects[r.target]
            assert r.answer == f"the {target.size} {target.colour} {target.shape}"
            assert [o.words for o in s.objects].count(target.words) == 1, "the answer's words fit its object alone"
            word = r.question.removesuffix("?").split()[-1]
            if r.kind == "negation":
                others = [o for o in s.objects if o is not target]
                assert word not in (target.colour, target.shape) and all(word in (o.colour, o.shape) for o in others)
            elif word in ("leftmost", "rightmost"):
                xs = [o.cx for o in s.objects]
                assert target.cx == (min(xs) if word == "leftmost" else max(xs))
            else:
                areas = sorted(o.area for o in s.objects if o is not target)
                assert target.area > 1.3 * areas[-1] if word == "largest" else 1.3 * target.area < areas[0]
    assert kinds == {"superlative", "negation"}
    assert reasoning_questions(make_scene("train", 2).objects) == [], "one object: nothing to infer"


@pytest.mark.parametrize("split", ["train", "decoy"])
def test_decoy_scenes_name_the_decoys_shape_at_least_as_often_after_the_targets_colour_and_size(split):
    checked = 0
    for i in range(60):
        scene = make_scene(split, i, decoys=True)
        assert _same(scene, make_scene(split, i, decoys=True))
        assert _same(scene, make_scene(split, i)) == (split == "decoy"), "every decoy split scene is drawn with decoys"
        assert all((o.colour, o.shape) not in HELD_OUT_PAIRS for o in scene.objects)
        targets = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
        assert len(targets) <= 1 and 2 <= len(scene.objects) <= 5
        if len(scene.objects) < 3 or not targets:  # an object that did not fit was dropped
            continue
        checked += 1
        target = targets[0]
        decoys = [o for o in scene.objects if o is not target]
        assert len({o.shape for o in decoys}) == 1
        by_colour = [o for o in decoys if o.colour == target.colour]
        by_size = [o for o in decoys if o.size == target.size]
        assert by_colour and by_size and not set(map(id, by_colour)) & set(map(id, by_size))
        assert len(by_colour) + len(by_size) == len(decoys)
    assert checked > 50


def test_decoy_split_is_a_dataset_spec():
    from flmm_probe.data.sources import open_dataset

    samples = list(open_dataset("shapes:decoy:4:caption"))
    assert samples and {s.attributes["split"] for s in samples} == {"decoy"}
    assert samples[0].text == make_scene("decoy", samples[0].attributes["index"]).caption
