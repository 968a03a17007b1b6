"""Render every figure that a run folder's files allow: `flmm-probe figures RUN_DIR`.

Files read from RUN_DIR, each optional (absent ones are skipped with a logged note):

  scores.parquet          analyses.score.score_records frame, optionally with a `backbone` column
                          -> layer_curves, head_heatmap_<metric>[_<backbone>]
  baselines.parquet       analyses.score.baseline_frame frame (same `backbone` values as scores)
                          -> baseline lines in layer_curves
  heads.parquet           analyses.heads.localization_heads table [+ backbone]
                          -> localization heads outlined in the head heatmaps
  training_steps.parquet  score_records frames of checkpoints with a `step` column [+ backbone]
                          -> training_steps_<metric>[_<backbone>]
  overlays*.npz           one phrase each: image (H, W, 3), mask (H, W) bool, maps (layer, head, y, x),
                          values (layer, head) its metric per head, metric (str); optional sample and
                          phrase (str) -> overlays*  (same stem as the .npz)
  masks.npz               images (n, H, W, 3), truth (n, H, W) bool, any of training_free, unet, sam
                          (n, H, W) bool; optional names (n,) -> masks
  counterfactual_table.parquet
                          analyses.counterfactual.counterfactual_table -> counterfactual

Figures go to RUN_DIR/figures/<name>.pdf and <name>.png.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .counterfactual import write_counterfactual
from .head_heatmap import write_head_heatmap
from .layer_curves import LAYER_METRICS, by_backbone, write_layer_curves
from .masks import MASK_COLUMNS, write_masks
from .overlays import write_overlays
from .training_steps import write_training_steps

log = logging.getLogger(__name__)

SCORES = "scores.parquet"
BASELINES = "baselines.parquet"
HEADS = "heads.parquet"
TRAINING_STEPS = "training_steps.parquet"
OVERLAYS = "overlays*.npz"
MASKS = "masks.npz"
COUNTERFACTUAL = "counterfactual_table.parquet"


def _read(run_dir: Path, name: str) -> pd.DataFrame | None:
    path = run_dir / name
    if not path.exists():
        log.info("skip %s: no %s", name, path)
        return None
    return pd.read_parquet(path)


def _suffix(backbone: str | None) -> str:
    return f"_{backbone.replace('/', '_')}" if backbone else ""


def _scalar(archive: np.lib.npyio.NpzFile, key: str) -> str:
    return str(archive[key]) if key in archive.files else ""


def render_all(
    run_dir: str | Path, metrics: Sequence[str] = LAYER_METRICS, n_boot: int = 1000, level: float = 0.95
) -> list[Path]:
    """Write every figure the files of `run_dir` allow (see the module docstring); returns the paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Run folder {run_dir} does not exist: pass the folder holding scores.parquet etc.")
    out = run_dir / "figures"
    bootstrap = {"n_boot": n_boot, "level": level}
    written: list[Path] = []
    scores = _read(run_dir, SCORES)
    if scores is not None:
        baselines = _read(run_dir, BASELINES)
        heads = _read(run_dir, HEADS)
        written += write_layer_curves(scores, baselines, out / "layer_curves", metrics=metrics, **bootstrap)
        localization = dict(by_backbone(heads)) if heads is not None else {}
        for backbone, part in by_backbone(scores):
            for metric in metrics:
                stem = out / f"head_heatmap_{metric}{_suffix(backbone)}"
                written += write_head_heatmap(part, stem, metric=metric, localization=localization.get(backbone), **bootstrap)
    steps = _read(run_dir, TRAINING_STEPS)
    if steps is not None:
        for backbone, part in by_backbone(steps):
            for metric in metrics:
                stem = out / f"training_steps_{metric}{_suffix(backbone)}"
                written += write_training_steps(part, stem, metric=metric, **bootstrap)
    overlays = sorted(run_dir.glob(OVERLAYS))
    if not overlays:
        log.info("skip overlays: no %s in %s", OVERLAYS, run_dir)
    for path in overlays:
        with np.load(path) as archive:
            written += write_overlays(
                archive["image"], archive["mask"], archive["maps"], archive["values"], _scalar(archive, "metric"),
                out / path.stem, sample=_scalar(archive, "sample"), phrase=_scalar(archive, "phrase"),
            )
    if (run_dir / MASKS).exists():
        with np.load(run_dir / MASKS) as archive:
            predictions = {key: archive[key] for key in MASK_COLUMNS if key in archive.files}
            names = list(archive["names"]) if "names" in archive.files else None
            written += write_masks(archive["images"], archive["truth"], predictions, out / "masks", names=names)
    else:
        log.info("skip masks: no %s", run_dir / MASKS)
    counterfactual = _read(run_dir, COUNTERFACTUAL)
    if counterfactual is not None:
        written += write_counterfactual(counterfactual, out / "counterfactual")
    for path in written:
        log.info("wrote %s", path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """`flmm-probe figures RUN_DIR [--metric M ...] [--n-boot N] [--level L]`; exit code 1 if nothing was drawn."""
    parser = argparse.ArgumentParser(
        prog="flmm-probe figures", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="run folder holding scores.parquet, baselines.parquet, ...")
    parser.add_argument(
        "--metric", action="append", dest="metrics", help=f"metric to draw (repeatable; default: {' '.join(LAYER_METRICS)})"
    )
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    parser.add_argument("--level", type=float, default=0.95, help="CI level")
    args = parser.parse_args(argv)
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting is chatty at INFO
    written = render_all(args.run_dir, metrics=args.metrics or LAYER_METRICS, n_boot=args.n_boot, level=args.level)
    if not written:
        log.warning("No figures: %s holds none of the files listed in `flmm-probe figures --help`.", args.run_dir)
        return 1
    log.info("%d files in %s", len(written), args.run_dir / "figures")
    return 0
