"""The whole pipeline on the embedded default, in minutes on a CPU (`flmm-probe demo`).

shapes world + organism LLaVA: record train and test scenes into stores -> analyse where grounding
lives (every layer and head against the masks, with baselines) -> fit the U-Net decoder and the SAM
refiner from the train store -> evaluate RES and PNG metrics on the test store -> segment one scene ->
render the figures. Every stage reads what the stage before wrote; rerunning resumes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from analyses.emergence import baseline_table, layer_curve
from analyses.run import analyze, load
from figures.render import render_all

from .backbones import load_backbone
from .data.sources import ShapesGrounding
from .evaluate import evaluate, format_table, overlay, segment
from .fit import FitConfig, fit, load_grounder
from .organism import load_organism, load_organism_sam
from .recording import record_dataset
from .store import Store

log = logging.getLogger(__name__)


def run_demo(
    out: str | Path = "runs/demo", num_scenes: int = 48, train_scenes: int = 160, epochs: int = 4, variant: str = "small"
) -> str:
    """Run every stage into `out`; returns the text report that `flmm-probe demo` prints."""
    out = Path(out)
    backbone = load_backbone(*load_organism(variant))
    sam = load_organism_sam()
    train, test = ShapesGrounding("train", train_scenes, "mix"), ShapesGrounding("test", num_scenes, "mix")
    stores = {}
    for name, dataset in (("train", train), ("test", test)):
        stores[name] = Store.create(out / f"store_{name}", {"backbone": f"organism:{variant}", "data": name}, exist_ok=True)
        record_dataset(backbone, dataset, stores[name], batch_size=8)
        stores[name].consolidate()

    analyze(stores["test"], test, out / "analysis")
    tables = load(out / "analysis")
    figures = render_all(out / "analysis")

    config = FitConfig(epochs=epochs, batch_size=8, lr=1e-3)
    run = fit(stores["train"], train, sam, config, out / "fit")
    grounder = load_grounder(run, sam)
    per_phrase, summary = evaluate(grounder, stores["test"], test)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    per_phrase.to_parquet(out / "per_phrase.parquet")

    scene = next(s for s in test if s.attributes["task"] == "png")
    phrases = [p.text for p in scene.phrases]
    masks, _, _ = segment(backbone, grounder, scene.image(), scene.text, scene.spans)
    overlay(scene.image(), masks, phrases).save(out / "segment_overlay.png")

    return _report(out, tables, summary, len(figures), scene.text)


def _report(out: Path, tables: dict, summary: dict, n_figures: int, text: str) -> str:
    scores = tables["scores"]
    best = layer_curve(scores, "pointing", head="best", n_boot=200)
    mean = layer_curve(scores, "pointing", head="mean", n_boot=200)
    base = baseline_table(tables["baselines"], "pointing", n_boot=200).set_index("baseline")
    top = tables["head_table"].iloc[0]
    lines = [
        f"Pointing game on {scores['sample'].nunique()} held-out samples ({int(best['n'].iloc[0])} phrases), 95% CI:",
        "  layer  best head            head-averaged map",
    ]
    for (_, b), (_, m) in zip(best.iterrows(), mean.iterrows()):
        lines.append(
            f"  {int(b['layer']):>5}  H{int(b['head']):<2} {b['estimate']:.2f} [{b['low']:.2f}, {b['high']:.2f}]"
            f"   {m['estimate']:.2f} [{m['low']:.2f}, {m['high']:.2f}]"
        )
    for name in ("uniform", "centre"):
        lines.append(f"  baseline {name}: {base.loc[name, 'estimate']:.2f}")
    lines.append(f"Best head: layer {int(top['layer'])} head {int(top['head'])}, pointing {top['estimate']:.2f}")
    lines += ["", "Segmentation on the held-out split:", format_table(summary), ""]
    lines.append(f"Segmented: {text!r} -> {out / 'segment_overlay.png'}")
    lines.append(f"{n_figures} figure files in {out / 'analysis' / 'figures'}; tables in {out / 'analysis'}")
    return "\n".join(lines)
