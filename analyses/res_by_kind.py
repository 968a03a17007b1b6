"""Which referring expressions a fit segments: RES scores by expression kind, from `flmm-probe evaluate`'s
per-phrase table (`<run>/per_phrase.parquet`).

The shapes world's expressions come in kinds (`shapes.Expression.kind`): attribute expressions, which say
one, two or three of the referent's attributes ("the cross", "the red cross", "the large red cross"; the
fewest that single it out), relational ones ("the red cross left of the blue square") and superlatives
("the largest cross"). One cIoU over all of them hides which kind keeps RES from its goals; this splits it.
Datasets without kinds (RefCOCO) give their expressions one group, "all".

It also says what each group costs the total. cIoU sums intersections and unions over all expressions, so
a perfect mask of an expression adds its true area to both; from the tables' `target_area` it gives the
cIoU of all expressions were this group segmented perfectly and the rest as fitted ("if perfect"), and
were every other group perfect and this one as fitted ("if rest perfect"): the ceiling this group leaves.
A mask can fall short in two ways: it covers the wrong object, or the right one imprecisely. "P@0.5" is the
fraction of expressions whose IoU is at least 0.5 (the hits), and "if misses perfect" the cIoU with every
other expression made perfect and the hits as fitted: an upper bound on what choosing the right object alone
gives, with the hits' imprecision left in.

    python -m analyses.res_by_kind runs/fit/per_phrase.parquet [other/per_phrase.parquet ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from flmm_probe.data.shapes import expression_group
from flmm_probe.evaluate import MASKS, RES_TASKS


def res_by_kind(per_phrase: pd.DataFrame) -> pd.DataFrame:
    """RES scores per expression group, then over all expressions.

    per_phrase: `evaluate.evaluate`'s frame (rows of other tasks are left out). Returns one row per group
    (index: group) with n and, for each mask scored (coarse, refined), cIoU (sum of intersections over sum
    of unions, as `metrics.res_scores`) and mIoU (mean per-expression IoU, i.e. gIoU), as fractions. Where
    the frame has target_area (tables from older versions of `evaluate` do not), also "m if perfect" and
    "m if rest perfect": the cIoU of all expressions with this group's masks, or every other group's, made
    perfect (NaN on the "all" row; not given where there is one group), and on every row "P@0.5 m" and "m if
    misses perfect": the fraction of the group's expressions with IoU >= 0.5, and the group's cIoU with the
    others made perfect.
    """
    res = per_phrase[per_phrase["task"].isin(RES_TASKS)]
    if res.empty:
        raise ValueError("no referring expressions in this table: res_by_kind needs an evaluation of a RES dataset.")
    groups = [expression_group(p, k) if isinstance(k, str) else "all" for p, k in zip(res["phrase"], res["kind"])]
    masks = [m for m in MASKS if res[f"iou_{m}"].notna().any()]

    def scores(rows: pd.DataFrame) -> dict[str, float]:
        out: dict[str, float] = {"n": len(rows)}
        for m in masks:
            out[f"cIoU {m}"] = rows[f"inter_{m}"].sum() / max(rows[f"union_{m}"].sum(), 1)
            out[f"mIoU {m}"] = rows[f"iou_{m}"].mean()
        return out

    by_group = {group: rows for group, rows in res.groupby(pd.Series(groups, index=res.index), sort=True)}
    table = {group: scores(rows) for group, rows in by_group.items()}
    if "target_area" in res and len(by_group) > 1:
        for group, rows in by_group.items():
            table[group].update(_ceilings(rows, res, masks))
    if len(table) > 1 or "all" not in table:
        table["all"] = scores(res)
    if "target_area" in res:
        for group, rows in {**by_group, "all": res}.items():
            table[group].update(_misses_perfect(rows, masks))
    frame = pd.DataFrame.from_dict(table, orient="index")
    frame["n"] = frame["n"].astype(int)
    frame.index.name = "group"
    return frame


def _ceilings(group: pd.DataFrame, res: pd.DataFrame, masks: list[str]) -> dict[str, float]:
    """All expressions' cIoU with `group` made perfect, and with every other expression made perfect."""
    area, area_all = group["target_area"].sum(), res["target_area"].sum()
    out = {}
    for m in masks:
        inter, union = group[f"inter_{m}"].sum(), group[f"union_{m}"].sum()
        inter_all, union_all = res[f"inter_{m}"].sum(), res[f"union_{m}"].sum()
        out[f"{m} if perfect"] = (inter_all - inter + area) / max(union_all - union + area, 1)
        out[f"{m} if rest perfect"] = (inter + area_all - area) / max(union + area_all - area, 1)
    return out


def _misses_perfect(rows: pd.DataFrame, masks: list[str]) -> dict[str, float]:
    """The hit rate (IoU >= 0.5) of `rows`, and their cIoU with every miss made perfect."""
    out = {}
    for m in masks:
        hit = rows[f"iou_{m}"] >= 0.5
        miss_area = rows.loc[~hit, "target_area"].sum()
        out[f"P@0.5 {m}"] = hit.mean()
        out[f"{m} if misses perfect"] = ((rows.loc[hit, f"inter_{m}"].sum() + miss_area)
                                         / max(rows.loc[hit, f"union_{m}"].sum() + miss_area, 1))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analyses.res_by_kind", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="+", type=Path, metavar="PER_PHRASE",
                   help="per_phrase.parquet files written by `flmm-probe evaluate` (one table each)")
    args = p.parse_args(argv)
    for path in args.tables:
        if not path.is_file():
            p.error(f"{path} is not a file: pass the per_phrase.parquet of a `flmm-probe evaluate` run")
        print(path)
        print(res_by_kind(pd.read_parquet(path)).round(3).to_string())
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
