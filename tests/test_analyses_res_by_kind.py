import numpy as np
import pandas as pd
import pytest

from analyses.res_by_kind import main, res_by_kind


def _row(task, phrase, kind, inter, union, refined=None, area=None):
    row = {"task": task, "phrase": phrase, "kind": kind, "inter_coarse": inter, "union_coarse": union,
           "iou_coarse": inter / union, "inter_refined": -1, "union_refined": -1, "iou_refined": np.nan}
    if refined is not None:
        row.update(inter_refined=refined[0], union_refined=refined[1], iou_refined=refined[0] / refined[1])
    if area is not None:
        row["target_area"] = area
    return row


def test_scores_each_kind_and_attribute_count_by_hand():
    frame = pd.DataFrame([
        _row("res", "the cross", "attribute", 8, 10, (9, 10)),
        _row("res", "the circle", "attribute", 2, 10, (10, 10)),
        _row("res", "the large red cross", "attribute", 1, 4, (3, 4)),
        _row("res", "the red cross left of the blue square", "relational", 0, 30, (0, 20)),
        _row("png", "a red cross", None, 5, 5, (5, 5)),  # another task: left out
    ])
    table = res_by_kind(frame)
    assert list(table.index) == ["attribute/1", "attribute/3", "relational", "all"]
    assert table.loc["attribute/1", "n"] == 2
    assert table.loc["attribute/1", "cIoU coarse"] == pytest.approx(10 / 20)
    assert table.loc["attribute/1", "mIoU coarse"] == pytest.approx((0.8 + 0.2) / 2)
    assert table.loc["attribute/1", "cIoU refined"] == pytest.approx(19 / 20)
    assert table.loc["relational", "cIoU refined"] == 0.0
    assert table.loc["all", "n"] == 4
    assert table.loc["all", "cIoU coarse"] == pytest.approx(11 / 54)
    assert table.loc["all", "cIoU refined"] == pytest.approx(22 / 44)
    assert "coarse if perfect" not in table  # a table without target_area (older evaluate) gives no ceilings


def test_ceilings_by_hand():
    # coarse: the cross 8 / 10 of area 9; the relational one 0 / 30 of area 20; all 8 / 40
    frame = pd.DataFrame([
        _row("res", "the cross", "attribute", 8, 10, (9, 10), area=9),
        _row("res", "the red cross left of the blue square", "relational", 0, 30, (5, 25), area=20),
    ])
    table = res_by_kind(frame)
    # the relational one perfect: (8 + 20) / (10 + 20); the cross perfect: (9 + 0) / (9 + 30)
    assert table.loc["relational", "coarse if perfect"] == pytest.approx(28 / 30)
    assert table.loc["relational", "coarse if rest perfect"] == pytest.approx(9 / 39)
    assert table.loc["attribute/1", "coarse if perfect"] == pytest.approx(9 / 39)
    assert table.loc["attribute/1", "refined if rest perfect"] == pytest.approx((9 + 20) / (10 + 20))
    assert table.loc["relational", "refined if perfect"] == pytest.approx((9 + 20) / (10 + 20))
    assert np.isnan(table.loc["all", "coarse if perfect"])


def test_hits_and_misses_perfect_by_hand():
    # coarse IoU: the cross 0.8 (a hit), the circle 0.2 (a miss, area 5), the relational one 0.0 (a miss, area 20);
    # refined IoU 0.9, 0.4, 0.2: one hit. A perfect miss adds its area to both sums.
    frame = pd.DataFrame([
        _row("res", "the cross", "attribute", 8, 10, (9, 10), area=9),
        _row("res", "the circle", "attribute", 2, 10, (4, 10), area=5),
        _row("res", "the red cross left of the blue square", "relational", 0, 30, (5, 25), area=20),
    ])
    table = res_by_kind(frame)
    assert table.loc["attribute/1", "P@0.5 coarse"] == 0.5
    assert table.loc["attribute/1", "coarse if misses perfect"] == pytest.approx((8 + 5) / (10 + 5))
    assert table.loc["relational", "coarse if misses perfect"] == 1.0
    assert table.loc["all", "P@0.5 refined"] == pytest.approx(1 / 3)
    assert table.loc["all", "refined if misses perfect"] == pytest.approx((9 + 5 + 20) / (10 + 5 + 20))
    assert table.loc["all", "coarse if misses perfect"] == pytest.approx((8 + 5 + 20) / (10 + 5 + 20))
    one_group = res_by_kind(frame.assign(kind=None))  # RefCOCO: one group, still split into hits and misses
    assert list(one_group.index) == ["all"]
    assert one_group.loc["all", "P@0.5 coarse"] == pytest.approx(1 / 3)


def test_without_kinds_or_refiner_one_group_and_coarse_only():
    frame = pd.DataFrame([_row("res", "man on the left", None, 3, 4), _row("res", "red car", None, 1, 4)])
    table = res_by_kind(frame)
    assert list(table.index) == ["all"] and "cIoU refined" not in table
    assert "coarse if perfect" not in res_by_kind(frame.assign(target_area=[4, 4]))
    assert "P@0.5 coarse" not in table  # without target_area, no split into hits and misses
    assert table.loc["all", "cIoU coarse"] == pytest.approx(4 / 8)


def test_refuses_a_table_without_expressions(tmp_path, capsys):
    with pytest.raises(ValueError, match="needs an evaluation of a RES dataset"):
        res_by_kind(pd.DataFrame([_row("png", "a red cross", None, 5, 5)]))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.parquet")])
    assert "is not a file" in capsys.readouterr().err
    path = tmp_path / "per_phrase.parquet"
    pd.DataFrame([_row("res", "the cross", "attribute", 8, 10, (9, 10))]).to_parquet(path)
    assert main([str(path)]) == 0
    assert "attribute/1" in capsys.readouterr().out
