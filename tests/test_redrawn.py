"""Scenes drawn by other code: the world's words and texts over another rasteriser, placement and background."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation

from flmm_probe.data.shapes import COLOURS, HELD_OUT_PAIRS, IMAGE_SIZE, SIZE_RADIUS, make_scene
from flmm_probe.data.redrawn import redrawn_scene, shapes_scene
from flmm_probe.data.sources import open_dataset
from flmm_probe.organism.scores import SPLITS, caption_hits

SCENES = [redrawn_scene(i) for i in range(40)]


def test_masks_are_the_pixels_drawn_and_objects_never_touch():
    for scene in SCENES:
        assert scene.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and scene.image.dtype == np.uint8
        things = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
        for o in scene.objects:
            colour = np.array(COLOURS[o.colour], float)
            inside = scene.image[o.mask].astype(float)
            assert np.abs(inside.mean(0) - colour).max() < 0.12 * 255, (scene.index, o.colour)
            assert not (binary_dilation(o.mask, np.ones((3, 3), bool)) & things).any(), "a background pixel between objects"
            things |= o.mask
        assert scene.stuff_masks["wall"].sum() == (~things).sum() and scene.floor is None


def test_words_texts_and_order_are_the_worlds():
    counts = [len(s.objects) for s in SCENES]
    assert min(counts) >= 2 and max(counts) <= 5 and np.mean(counts) > 3
    for scene in SCENES:
        assert [o.cx for o in scene.objects] == sorted(o.cx for o in scene.objects), "indexed left to right"
        assert all((o.colour, o.shape) not in HELD_OUT_PAIRS for o in scene.objects)
        assert all(SIZE_RADIUS[o.size][0] <= o.radius <= SIZE_RADIUS[o.size][1] for o in scene.objects)
        assert sorted(scene.order) == list(range(len(scene.objects)))
        assert all(caption_hits(scene.caption, scene)["object"]), "the caption names every object rightly"
        assert [p.text for p in scene.caption_phrases] == [f"{'an' if scene.objects[i].size[0] in 'aeiou' else 'a'} "
                                                           f"{scene.objects[i].words}" for i in scene.order]
    assert sum(s.order != tuple(range(len(s.objects))) for s in SCENES) > 20, "named in a random order"


def test_the_same_index_gives_the_same_scene_and_scores_read_it():
    a, b = redrawn_scene(7), redrawn_scene(7)
    assert (a.image == b.image).all() and a.caption == b.caption and a.qa == b.qa
    assert not (redrawn_scene(7, seed=1).image == a.image).all()
    assert "redrawn" in SPLITS and shapes_scene("redrawn", 7).caption == a.caption
    assert shapes_scene("test", 3).caption == make_scene("test", 3).caption


def test_analyses_open_them_by_spec():
    dataset = open_dataset("shapes:redrawn:5:caption")
    sample = dataset[0]
    scene = redrawn_scene(0)
    assert sample.sample_id == "shapes/redrawn/0/caption/0" and sample.text == scene.caption
    assert (np.asarray(sample.image()) == scene.image).all()
    assert [p.text for p in sample.phrases] == [p.text for p in scene.caption_phrases]
    assert all((m == p.mask).all() for m, p in zip(sample.masks(), scene.caption_phrases))
