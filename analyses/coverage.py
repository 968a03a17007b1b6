"""Do the maps say how much of each patch the referent covers? Attention by coverage, per layer and head.

A coarse mask can be only as sharp as its maps say where the referent ends inside a patch. For every
phrase with a mask, each (layer, head) map is normalised to sum 1 and scaled by its number of cells (1 is
uniform attention), and each cell is binned by the fraction of its area the referent covers
(`metrics.mask_to_grid`): outside, (0, 1/4), [1/4, 1/2), [1/2, 3/4), [3/4, 1]. Per layer and head the
table gives the mean log10 of that relative attention in each bin, over all cells of all phrases (a
geometric mean: attention spans orders of magnitude), and the Spearman correlation of attention with
coverage over the cells the referent touches, averaged over phrases. Maps that resolve extent rise
through the bins; maps that only find the object step up once, at the coverage where a patch turns from
background to object, and no decoder reading them can tell a sliver from nothing.

    python -m analyses.coverage --store runs/shapes/test --data shapes:test:100:mix --task res
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from tqdm.auto import tqdm

from flmm_probe.metrics import mask_to_grid

from .score import ScoredSample, record_maps

BIN_EDGES = (0.25, 0.5, 0.75)
BINS = ("outside", "(0, 1/4)", "[1/4, 1/2)", "[1/2, 3/4)", "[3/4, 1]")
FLOOR = 1e-6  # attention below this share of a map counts as this: log10 stays finite for an all-zero cell


def coverage_bins(cover: torch.Tensor) -> torch.Tensor:
    """(..., y, x) coverage in [0, 1] -> (..., y, x) index into BINS."""
    inside = sum((cover >= edge).long() for edge in BIN_EDGES) + 1
    return torch.where(cover > 0, inside, 0)


def spearman(values: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """Rank correlation (ties get their mean rank) of each row of values (n, cells) with cover (cells,);
    NaN for a row or a cover that is constant."""
    a = rankdata(values, axis=-1)
    b = rankdata(cover)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a @ b) / np.sqrt((a**2).sum(-1) * (b**2).sum())


def phrase_coverage(maps: torch.Tensor, cover: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """One phrase: maps (layer, head, y, x) and its referent's coverage (y, x) of the same grid ->
    sums (layer, head, bin) of log10 relative attention, cells (bin,) counted, Spearman (layer, head)
    over the touched cells (NaN where fewer than 3 cells are touched)."""
    layers, heads = maps.shape[:2]
    flat = maps.float().reshape(layers * heads, -1)
    share = flat / flat.sum(-1, keepdim=True).clamp(min=1e-12)
    relative = share.clamp(min=FLOOR) * flat.shape[-1]
    bins = coverage_bins(cover).reshape(-1)
    onehot = torch.nn.functional.one_hot(bins, len(BINS)).float()  # (cells, bin)
    sums = (relative.log10() @ onehot).reshape(layers, heads, len(BINS))
    touched = (cover.reshape(-1) > 0).numpy()
    rho = np.full(layers * heads, np.nan)
    if touched.sum() >= 3:
        rho = spearman(share[:, touched].numpy(), cover.reshape(-1)[touched].numpy())
    return sums, onehot.sum(0), rho.reshape(layers, heads)


def coverage_frame(samples: Iterable[ScoredSample], kind: str = "fused", task: str | None = None,
                   progress: bool = True) -> pd.DataFrame:
    """Attention by coverage over every phrase of `samples` (only those whose attributes' task is `task`,
    if given). Returns one row per (layer, head), index (layer, head), columns: each of BINS (mean log10
    relative attention; NaN for a bin no cell fell in), spearman (mean over phrases), phrases (how many
    phrases the spearman averages)."""
    sums = cells = rho_sum = rho_n = None
    for sample in tqdm(samples, desc="coverage", unit="sample", disable=not progress):
        maps = record_maps(sample.record, kind)  # (phrase, layer, head, y, x)
        for i, mask in enumerate(sample.masks):
            if task is not None and (not sample.attributes or sample.attributes[i].get("task") != task):
                continue
            cover = mask_to_grid(mask, tuple(maps.shape[-2:]))
            s, c, rho = phrase_coverage(maps[i], cover)
            if sums is None:
                sums, cells, rho_sum, rho_n = torch.zeros_like(s), torch.zeros_like(c), np.zeros(rho.shape), np.zeros(rho.shape)
            sums, cells = sums + s, cells + c
            rho_sum += np.nan_to_num(rho)
            rho_n += ~np.isnan(rho)
    if sums is None:
        raise ValueError(f"No phrase with a mask{f' of task {task!r}' if task else ''} among the samples: "
                         "pass a store and dataset with masks (and a task they hold).")
    layers, heads = sums.shape[:2]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums / cells).reshape(layers * heads, len(BINS)).numpy()
        rho = (rho_sum / rho_n).reshape(-1)
    frame = pd.DataFrame(means, columns=list(BINS),
                         index=pd.MultiIndex.from_product([range(layers), range(heads)], names=["layer", "head"]))
    frame["spearman"] = rho
    frame["phrases"] = rho_n.reshape(-1).astype(int)
    return frame


def main(argv: list[str] | None = None) -> int:
    """Print each head's mean log10 relative attention by how much of a cell the referent covers."""
    from flmm_probe.data.sources import open_dataset
    from flmm_probe.store import Store

    from .run import scored_samples

    p = argparse.ArgumentParser(prog="python -m analyses.coverage", description=main.__doc__)
    p.add_argument("--store", required=True, help="store written by `flmm-probe record`")
    p.add_argument("--data", required=True, help="the dataset spec it was recorded from (for the masks)")
    p.add_argument("--task", help="only phrases of this task, e.g. res or png (shapes world: res, png, caption)")
    p.add_argument("--kind", default="fused", help="view kind of the maps: fused (all averaged) or one kind")
    p.add_argument("--top", type=int, default=5, help="heads to print, by Spearman correlation")
    p.add_argument("--out", help="write the whole table to this parquet file")
    args = p.parse_args(argv)
    frame = coverage_frame(scored_samples(Store.open(args.store), open_dataset(args.data)), args.kind, args.task)
    if args.out:
        frame.to_parquet(args.out)
    top = frame.sort_values("spearman", ascending=False).head(args.top)
    mean = frame.mean().to_frame("all heads").T
    with pd.option_context("display.width", 200, "display.float_format", "{:.2f}".format):
        print(pd.concat([top.set_axis([f"L{l}H{h}" for l, h in top.index]), mean]).drop(columns="phrases"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
