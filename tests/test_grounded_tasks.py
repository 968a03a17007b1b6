"""GCG and reasoning-segmentation scores on answers built by hand, and pycocotools' AP."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from flmm_probe.apps import GroundedAnswer, GroundedPhrase
from flmm_probe.data.reasonseg import IGNORE, ReasonSeg, iou_ignoring
from flmm_probe.apps import crop_box
from flmm_probe.data.shapes import IMAGE_SIZE, MAX_OBJECTS, SIZE_RADIUS, ZOOM, make_scene, shape_mask
from flmm_probe.grounded_tasks import (CENTRE_RADIUS, COT_KINDS, ap50, asked_object, baseline_answer, centre_prior, gcg_scores,
                                       greedy_pairs, iou_matrix, phrase_fits)

SCENE = next(s for s in (make_scene("test", i) for i in range(50)) if len(s.objects) == 3)


def _answer(phrases: list[tuple[str, np.ndarray]], score: float = 0.9) -> GroundedAnswer:
    text = ", ".join(p for p, _ in phrases) + "."
    out, start = [], 0
    for p, mask in phrases:
        out.append(GroundedPhrase(p, start, start + len(p), mask, score))
        start += len(p) + 2
    return GroundedAnswer("q", text, [], out)


def test_greedy_pairs_take_the_best_first_and_stop_like_glamm():
    scores = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert greedy_pairs(scores) == [(0, 0), (1, 1)]
    admissible = np.array([[True, True], [True, False]])
    assert greedy_pairs(scores, admissible, 0.5) == [(0, 0)], "the next best pair is under the threshold: stop"
    assert greedy_pairs(scores, ~admissible, 0.5) == [], "the best pair is not admissible: stop, as GLaMM does"


def test_phrase_fits_checks_every_word_said():
    o = SCENE.objects[0]
    assert phrase_fits(f"a {o.size} {o.colour} {o.shape}", o) and phrase_fits(f"the {o.shape}", o)
    other = next(c for c in ("red", "blue") if c != o.colour)
    assert not phrase_fits(f"a {other} {o.shape}", o) and not phrase_fits("a large", o)


def test_gcg_scores_count_matches_miou_and_captions():
    objects = SCENE.objects
    right = [(f"a {o.size} {o.colour} {o.shape}", o.mask) for o in objects]
    perfect = gcg_scores(SCENE, _answer(right))
    assert perfect["matched"] == 3 and perfect["miou"] == 1.0 and all(perfect["caption"]["object"])
    # The right words on the wrong masks: masks overlap nothing of their own object.
    swapped = [(right[0][0], objects[1].mask), (right[1][0], objects[0].mask), (right[2][0], objects[2].mask)]
    scores = gcg_scores(SCENE, _answer(swapped))
    # mIoU pairs masks whatever the words; recall stops at the first best-IoU pair whose phrase does not fit
    # (GLaMM's rule), here object 0's mask under object 1's words.
    assert scores["matched"] == 0 and scores["miou"] == 1.0
    assert gcg_scores(SCENE, _answer(right[:1] + swapped[1:2]))["matched"] == 1
    empty = gcg_scores(SCENE, _answer([]))
    assert empty["matched"] == 0 and empty["miou"] == 0.0 and not any(empty["caption"]["object"])
    assert iou_matrix([objects[0].mask], [objects[0].mask | objects[1].mask])[0, 0] == pytest.approx(
        objects[0].area / (objects[0].area + objects[1].area))


def test_ap50_is_cocoeval_at_iou_half():
    scenes = [SCENE, SCENE]
    perfect = [_answer([(f"the {o.shape}", o.mask) for o in SCENE.objects])] * 2
    assert ap50(scenes, perfect) == pytest.approx(1.0)
    wrong = [_answer([("the thing", np.roll(o.mask, 40, axis=1)) for o in SCENE.objects])] * 2
    assert ap50(scenes, wrong) == pytest.approx(0.0)
    # Half of the images right, scored above the wrong ones: precision 1 up to recall 0.5.
    assert ap50(scenes, [perfect[0], _answer([])]) == pytest.approx(0.5, abs=0.01)


def _write_reasonseg(folder, name, shapes, text=("what is red?",), size=(40, 60), image=True):
    folder.mkdir(parents=True, exist_ok=True)
    if image:
        Image.new("RGB", (size[1], size[0]), (90, 90, 90)).save(folder / f"{name}.jpg")
    (folder / f"{name}.json").write_text(json.dumps({"text": list(text), "is_sentence": False, "shapes": shapes}))


def test_reasonseg_files_become_lisas_masks_and_bad_files_are_counted(tmp_path):
    square = [[10, 5], [29, 5], [29, 24], [10, 24]]
    inner = [[15, 10], [20, 10], [20, 15], [15, 15]]
    folder = tmp_path / "val"
    _write_reasonseg(folder, "a", [{"label": "target", "points": square}, {"label": "ignore_1", "points": inner},
                                   {"label": "flag", "points": [[0, 0], [59, 0], [59, 39]]}], text=("q1", "q2"))
    _write_reasonseg(folder, "b", [{"label": "target", "points": square}], image=False)
    _write_reasonseg(folder, "c", [{"label": "ignore", "points": square}])
    (folder / "d.json").write_text("{not json")
    Image.new("RGB", (4, 4)).save(folder / "d.jpg")
    dataset = ReasonSeg(tmp_path, "val")
    samples = list(dataset)
    assert [s.sample_id for s in samples] == ["a"] and samples[0].questions == ["q1", "q2"]
    mask = samples[0].mask
    assert mask.shape == (40, 60) and set(np.unique(mask)) == {0, 1, IGNORE}
    assert (mask[10:16, 15:21] == IGNORE).all(), "the smaller polygon is drawn last, outline included"
    assert (mask == 1).sum() == 20 * 20 - 6 * 6 and (mask[5:25, 10:30] > 0).all()
    assert sorted(b.sample_id for b in dataset.bad) == ["b", "c", "d"]
    predicted = mask == 1
    predicted[0, 0] = True
    assert iou_ignoring(predicted | (mask == IGNORE), mask) == (364, 365), "ignored pixels count for neither"
    with pytest.raises(FileNotFoundError, match="ROOT/SPLIT"):
        ReasonSeg(tmp_path, "test")


def test_baselines_replace_masks_and_keep_phrases():
    answer = _answer([(f"the {o.shape}", o.mask) for o in SCENE.objects])
    rng = np.random.default_rng(0)
    centre = baseline_answer(answer, SCENE, "centre_prior", rng)
    assert [p.text for p in centre.phrases] == [p.text for p in answer.phrases]
    assert all((p.mask == centre_prior((80, 80))).all() for p in centre.phrases)
    assert centre_prior((80, 80)).sum() == pytest.approx(np.pi * CENTRE_RADIUS**2, rel=0.05)
    drawn = baseline_answer(answer, SCENE, "random_object", rng)
    assert all(any((p.mask == o.mask).all() for o in SCENE.objects) for p in drawn.phrases)
    assert answer.phrases[0].mask is SCENE.objects[0].mask, "the answer itself is left as it was"


def test_attention_baseline_thresholds_the_chosen_heads_of_each_phrase():
    from flmm_probe.grounded_tasks import attention_masks
    from flmm_probe.record import AttentionRecord

    answer = _answer([(f"the {o.shape}", o.mask) for o in SCENE.objects[:2]])
    maps = torch.zeros(2, 2, 3, 10, 10)  # (phrase, layer, head, y, x)
    maps[0, 1, 2, 2:4, 5:7] = 1.0  # phrase 0: head (1, 2) looks at one block; head (0, 0) is flat
    maps[1, 1, 2, 6:8, 1:3] = 1.0
    answer.record = AttentionRecord(text=answer.text, phrases=[p.text for p in answer.phrases],
                                    spans=[(p.start, p.end) for p in answer.phrases], maps={"global": maps}, image_size=(80, 80))
    first, second = baseline_answer(answer, SCENE, "attention", np.random.default_rng(0), heads=[(1, 2)]).phrases
    # Cells 2-3 x 5-6 of the 10 x 10 grid are pixels 16-31 x 40-55 of the 80 x 80 image.
    assert first.mask[20:28, 44:52].all() and not first.mask[:12].any() and not first.mask[:, :36].any()
    assert second.mask[52:60, 12:20].all() and not second.mask[:44].any()
    assert attention_masks(_answer([]), [(1, 2)], (80, 80)) == []


def test_crop_box_centres_the_most_probable_piece_and_stays_inside():
    mask = np.zeros((320, 320), bool)
    mask[100:110, 200:220] = True  # the piece holding the peak
    mask[10:60, 10:60] = True  # a larger piece elsewhere
    logits = np.where(mask, 1.0, -1.0)
    logits[105, 210] = 5.0
    assert crop_box(mask, logits, context=3.0) == (180, 75, 240, 135)  # 3 x 20 px around (105, 210)
    assert crop_box(mask, logits, context=3.0, min_side=80) == (170, 65, 250, 145)
    corner = np.zeros((320, 320), bool)
    corner[0:4, 316:320] = True
    assert crop_box(corner, corner.astype(float), min_side=80) == (240, 0, 320, 80)  # shifted inside the image
    empty = np.zeros((50, 40), bool)
    peak = np.zeros((50, 40))
    peak[20, 30] = 1.0
    assert crop_box(empty, peak, min_side=100) == (0, 0, 40, 40)  # clipped to the image's short side
    assert crop_box(empty, peak, min_side=10) == (26, 16, 36, 26)


def test_zoom_scenes_are_wide_with_objects_of_the_worlds_pixel_sizes():
    scenes = [make_scene("zoom", i) for i in range(20)]
    for scene in scenes:
        assert scene.image.shape == (ZOOM * IMAGE_SIZE, ZOOM * IMAGE_SIZE, 3) and 3 <= len(scene.objects) <= MAX_OBJECTS
        for o in scene.objects:
            assert o.mask.shape == scene.image.shape[:2] and o.mask.sum() == shape_mask(o.shape, o.cx, o.cy, o.radius, ZOOM * IMAGE_SIZE).sum()
            lo, hi = SIZE_RADIUS[o.size]
            assert lo <= o.radius <= hi
        for qa in scene.qa:
            if qa.kind in COT_KINDS:
                phrase, target = asked_object(scene, qa)
                assert phrase in qa.question and getattr(scene.objects[target], qa.kind) == qa.answer


def test_chain_of_thought_answers_on_the_crop_around_the_grounded_object(monkeypatch):
    import flmm_probe.apps as apps
    from flmm_probe import load_backbone
    from flmm_probe.organism import load_organism

    backbone = load_backbone(*load_organism("small"))
    scene = make_scene("zoom", 3)
    qa = next(q for q in scene.qa if q.kind == "shape")
    phrase, target = asked_object(scene, qa)
    truth = scene.objects[target].mask
    planted = torch.from_numpy(np.where(truth, 4.0, -4.0)[None]).float()  # a grounder that finds the object exactly
    monkeypatch.setattr(apps, "segment", lambda backbone, grounder, image, text, phrases: (truth[None], planted, None))
    chain = apps.chain_of_thought(backbone, None, scene.image, qa.question, phrase, min_side=IMAGE_SIZE)
    x0, y0, x1, y1 = chain.box
    assert x1 - x0 == y1 - y0 == IMAGE_SIZE and truth[y0:y1, x0:x1].sum() == truth.sum()
    assert (chain.text, chain.tokens) == apps.generate(backbone, scene.image[y0:y1, x0:x1], qa.question, 16)
    assert chain.note == "" and chain.phrase == phrase
