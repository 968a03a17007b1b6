"""GCG and reasoning-segmentation scores on answers built by hand, and pycocotools' AP."""

import numpy as np
import pytest

from flmm_probe.apps import GroundedAnswer, GroundedPhrase
from flmm_probe.data.shapes import make_scene
from flmm_probe.grounded_tasks import ap50, gcg_scores, greedy_pairs, iou_matrix, phrase_fits

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
