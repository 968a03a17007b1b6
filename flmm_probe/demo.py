"""The whole pipeline on the embedded default, in minutes on a CPU (`flmm-probe demo`).

shapes world + organism LLaVA:
  1. record train and test scenes into stores (the LMM runs once per sample, never again);
  2. where grounding lives: every layer's and head's maps of the test split against the masks, with
     uniform and centre-prior baselines; and whether they follow the words or the phrases' order (the test
     captions, and those of scenes drawn by other code, recorded again with their phrases permuted:
     analyses.counterfactual);
  3. how far attention alone gets: masks from the top 3 heads (chosen on the train split), alone and as
     SAM box / point prompts;
  4. fit the U-Net decoder and the SAM refiner on the train store, evaluate RES and PNG metrics on the
     test store;
  5. grounding vs training step over the organism's shipped checkpoints;
  6. segment one scene, and render every figure;
  7. the LMM's own descriptions and answers to reasoning questions, grounded (GCG, reasoning segmentation),
     and a visual chain of thought on small objects of wide images (ground, crop, ask again);
  8. results.md, the run's results page (``analyses.report``).
Every stage reads what the stage before wrote; rerunning resumes the recordings and the fit.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from segment_anything import SamPredictor

from analyses.counterfactual import run as run_counterfactual
from analyses.report import results_markdown
from analyses.run import analyze, load
from analyses.score import ScoredSample
from analyses.training_steps import training_steps_frame
from analyses.training_free import evaluate_training_free, training_free_masks
from figures.overlays import head_scores
from figures.render import render_all

from .backbones import Backbone, load_backbone
from .data.samples import GroundingDataset
from .data.shapes import ShapesDataset
from .data.sources import ShapesGrounding
from .decoder import Grounder, load_grounder
from .evaluate import evaluate, overlay, segment
from .fit import FitConfig, fit
from .grounded_tasks import evaluate_cot, evaluate_gcg, evaluate_reasoning
from .metrics import head_heatmap
from .organism import load_organism, load_organism_sam
from .record_job import record_dataset
from .store import Store

TRAINING_FREE_HEADS = 3


def run_demo(
    out: str | Path = "runs/demo", num_scenes: int = 48, train_scenes: int = 160, epochs: int = 4, variant: str = "small"
) -> str:
    """Run every stage into `out`; returns the text report that `flmm-probe demo` prints."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"variant": variant, "scenes": num_scenes, "train_scenes": train_scenes, "epochs": epochs,
                "threads": torch.get_num_threads(), "torch": torch.__version__}
    (out / "run.json").write_text(json.dumps(settings, indent=1))
    backbone = load_backbone(*load_organism(variant))
    sam = load_organism_sam()
    train, test = ShapesGrounding("train", train_scenes, "mix"), ShapesGrounding("test", num_scenes, "mix")
    stores = {name: _record(backbone, data, out / f"store_{name}", variant) for name, data in (("train", train), ("test", test))}

    analyze(stores["test"], test, out / "analysis")
    run_counterfactual(backbone, ShapesGrounding("test", num_scenes, "caption"), out / "analysis", progress=False)
    run_counterfactual(backbone, ShapesGrounding("redrawn", num_scenes, "caption"), out / "analysis" / "redrawn", progress=False)
    tables = load(out / "analysis")

    analyze(stores["train"], train, out / "selection", progress=False)
    ranked = load(out / "selection")["head_table"]
    heads = [(int(layer), int(head)) for layer, head in ranked[["layer", "head"]].head(TRAINING_FREE_HEADS).to_numpy()]
    res = [
        (ScoredSample(s.sample_id, stores["test"].read(s.sample_id), list(s.masks())), np.asarray(s.image()))
        for s in test
        if s.attributes["task"] == "res"
    ]
    _, training_free = evaluate_training_free(res, heads, predictor=SamPredictor(sam))
    training_free.to_parquet(out / "training_free.parquet")

    # The paper's recipe, but a narrower U-Net at 32 px (the organism's maps are 10x10, not 24x24) and a
    # larger learning rate, for a CPU and a tiny world.
    config = FitConfig(epochs=epochs, batch_size=8, lr=1e-3, base_channels=16, long_side=32)
    grounder = load_grounder(fit(stores["train"], train, sam, config, out / "fit", resume=True), sam)
    per_phrase, summary = evaluate(grounder, stores["test"], test)
    per_phrase.to_parquet(out / "per_phrase.parquet")
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))

    _figure_inputs(out / "analysis", res[:4], heads, grounder, tables["scores"])
    steps = training_steps_frame(variant, ShapesGrounding("test", 16, "caption"), progress=False)
    steps.to_parquet(out / "analysis" / "training_steps.parquet")
    figures = render_all(out / "analysis")
    scene = next(s for s in test if s.attributes["task"] == "png")
    masks, _, _ = segment(backbone, grounder, scene.image(), scene.text, scene.spans)
    overlay(scene.image(), masks, [p.text for p in scene.phrases]).save(out / "segment_overlay.png")

    # The LMM's own answers, grounded: descriptions (GCG) and reasoning questions, on the held-out scenes; the
    # chain of thought on the zoom split, where objects are too small to read in the model's view.
    scenes = list(ShapesDataset("test", num_scenes))
    # Attention alone (the top heads, chosen on the train split) is their baseline beside a random object and the centre.
    for name, task, split in (("gcg", partial(evaluate_gcg, heads=heads), scenes),
                              ("reason", partial(evaluate_reasoning, heads=heads), scenes),
                              ("cot", evaluate_cot, list(ShapesDataset("zoom", num_scenes)))):
        rows, scores = task(backbone, grounder, split, progress=False)
        rows.to_parquet(out / f"{name}.parquet")
        (out / f"{name}.json").write_text(json.dumps(scores, indent=1, default=float))
    results = results_markdown(out)
    (out / "results.md").write_text(results)
    return (f"{results}\nSegmented {scene.text!r} -> {out / 'segment_overlay.png'}\n"
            f"{len(figures)} figure files in {out / 'analysis' / 'figures'}; tables, metrics and results.md in {out}")


def _record(backbone: Backbone, dataset: GroundingDataset, root: Path, variant: str) -> Store:
    store = Store.create(root, {"backbone": f"organism:{variant}", "data": dataset.split}, exist_ok=True)
    record_dataset(backbone, dataset, store, batch_size=8)
    store.consolidate()
    return store


def _figure_inputs(
    folder: Path, res: list[tuple[ScoredSample, np.ndarray]], heads: list[tuple[int, int]], grounder: Grounder, scores: pd.DataFrame
) -> None:
    """masks.npz (training-free vs fitted masks) and overlays.npz (top heads of one phrase), for figures/."""
    predictions: dict[str, list[np.ndarray]] = {"training_free": [], "unet": [], "sam": []}
    for sample, image in res:
        heat = head_heatmap(sample.record.fused(), heads, image.shape[:2])
        predictions["training_free"].append(training_free_masks(image, heat)["attention"][0])
        embedding, input_size, _ = grounder.refiner.embed(image)
        coarse, refined = grounder.ground(sample.record, embedding, input_size)
        predictions["unet"].append((coarse[0] > 0).cpu().numpy())
        predictions["sam"].append((refined[0] > 0).cpu().numpy())
    np.savez(
        folder / "masks.npz",
        images=np.stack([image for _, image in res]),
        truth=np.stack([sample.masks[0] for sample, _ in res]),
        names=np.array([sample.record.text for sample, _ in res]),
        **{name: np.stack(masks) for name, masks in predictions.items()},
    )
    sample, image = res[0]
    np.savez(
        folder / "overlays.npz",
        image=image,
        mask=sample.masks[0],
        maps=sample.record.fused()[0].numpy(),
        values=head_scores(scores, sample.sample_id, 0, "auroc"),
        metric="auroc",
        sample=sample.sample_id,
        phrase=sample.record.phrases[0],
    )
