"""Which referring expressions a fit segments: RES scores by expression kind, from `flmm-probe evaluate`'s
per-phrase table (`<run>/per_phrase.parquet`).

The shapes world's expressions come in kinds (`shapes.Expression.kind`): attribute expressions, which say
one, two or three of the referent's attributes ("the cross", "the red cross", "the large red cross"; the
fewest that single it out), relational ones ("the red cross left of the blue square") and superlatives
("the largest cross"). One cIoU over all of them hides which kind keeps RES from its goals; this splits it.
Datasets without kinds (RefCOCO) give their expressions one group, "all".

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
    of unions, as `metrics.res_scores`) and mIoU (mean per-expression IoU, i.e. gIoU), as fractions.
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

    table = {group: scores(rows) for group, rows in res.groupby(pd.Series(groups, index=res.index), sort=True)}
    if len(table) > 1 or "all" not in table:
        table["all"] = scores(res)
    frame = pd.DataFrame.from_dict(table, orient="index")
    frame["n"] = frame["n"].astype(int)
    frame.index.name = "group"
    return frame


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
