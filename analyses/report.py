"""A run folder's results as Markdown: `flmm-probe report RUN_DIR > docs/results.md`.

Everything is read from the files the demo wrote into RUN_DIR (run.json, analysis/*.parquet,
training_free.parquet, metrics.json, gcg.json, reason.json, cot.json), so a results page made this way says what that
run measured and nothing else; rerun the demo and the command to refresh it. Sections whose files are
missing are left out, and say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .counterfactual import head_summary
from .emergence import baseline_table, layer_curve

from flmm_probe.evaluate import format_table

N_BOOT = 1000


def _ci(estimate: float, low: float, high: float) -> str:
    return f"{estimate:.2f} [{low:.2f}, {high:.2f}]"


def _read(run: Path, name: str) -> pd.DataFrame | None:
    path = run / name
    return pd.read_parquet(path) if path.exists() else None


def _json(run: Path, name: str) -> dict | None:
    path = run / name
    return json.loads(path.read_text()) if path.exists() else None


def _grounding(run: Path) -> list[str]:
    scores, baselines = _read(run, "analysis/scores.parquet"), _read(run, "analysis/baselines.parquet")
    if scores is None or baselines is None:
        return ["(no analysis/scores.parquet: the analysis did not run)"]
    best = layer_curve(scores, "pointing", head="best", n_boot=N_BOOT)
    mean = layer_curve(scores, "pointing", head="mean", n_boot=N_BOOT)
    base = baseline_table(baselines, "pointing", n_boot=N_BOOT).set_index("baseline")
    lines = [f"Pointing game on {scores['sample'].nunique()} held-out samples ({int(best['n'].iloc[0])} phrases: "
             "referring expressions and narrative phrases), 95% cluster-bootstrap intervals; a layer's best head is "
             "chosen on these phrases.", "", "| layer | best head | its pointing | head-averaged map |", "|---|---|---|---|"]
    for (_, b), (_, m) in zip(best.iterrows(), mean.iterrows()):
        lines.append(f"| {int(b['layer'])} | H{int(b['head'])} | {_ci(b['estimate'], b['low'], b['high'])} | "
                     f"{_ci(m['estimate'], m['low'], m['high'])} |")
    lines += ["", f"Baselines: a uniform map {base.loc['uniform', 'estimate']:.2f}, a centre prior "
                  f"{base.loc['centre', 'estimate']:.2f}."]
    return lines


def _counterfactual(run: Path, folder: str = "analysis", scenes: str = "The test captions of {n} scenes") -> list[str]:
    table, frame = _read(run, f"{folder}/counterfactual_table.parquet"), _read(run, f"{folder}/counterfactual.parquet")
    heads = _read(run, "analysis/head_table.parquet")
    if table is None or frame is None or heads is None:
        return [f"(no {folder}/counterfactual_table.parquet)"]
    moved = frame[(frame["order"] == "permuted") & frame["displaced"]]
    lines = [f"{scenes.format(n=moved['sample'].nunique())} recorded again with their phrases in another "
             f"order ({moved[['sample', 'phrase']].drop_duplicates().shape[0]} moved phrases; `analyses.counterfactual`). "
             "Pointing at the object the phrase names, at the object its slot held before the permutation, and at the "
             "object of its slot's left-to-right rank, for the heads the pointing analysis ranks first:", "",
             "| head | named, original text | named, permuted | slot's object | rank's object | named - slot |",
             "|---|---|---|---|---|---|"]
    for _, row in heads.head(3).iterrows():
        s = head_summary(table, int(row["layer"]), int(row["head"]))
        lines.append(f"| L{int(row['layer'])}H{int(row['head'])} | {_ci(*s['original/named'])} | {_ci(*s['permuted/named'])} | "
                     f"{_ci(*s['permuted/slot'])} | {_ci(*s['permuted/rank'])} | {_ci(*s['permuted/named_minus_slot'])} |")
    return lines


def _training_free(run: Path) -> list[str]:
    frame = _read(run, "training_free.parquet")
    if frame is None:
        return ["(no training_free.parquet)"]
    lines = ["| method | cIoU | gIoU |", "|---|---|---|"]
    lines += [f"| {r['method']} | {100 * r['cIoU']:.1f} | {100 * r['gIoU']:.1f} |" for _, r in frame.iterrows()]
    return lines


def _applications(run: Path) -> list[str]:
    gcg, reason = _json(run, "gcg.json"), _json(run, "reason.json")
    if gcg is None or reason is None:
        return ["(no gcg.json / reason.json)"]
    lines = [f"Grounded conversation generation on {gcg['images']} test scenes (the LMM's own descriptions; "
             f"{gcg['no_phrase']} without a phrase), and reasoning segmentation on {reason['questions']} questions "
             f"({reason['no_phrase']} answers without a phrase); baselines keep the answer's phrases and replace "
             "their masks.", "",
             "| | GCG recall | GCG mIoU | GCG AP50 | reasoning gIoU | reasoning cIoU |", "|---|---|---|---|---|---|"]
    for name, prefix in (("fitted decoder + refiner", ""), ("attention alone (top heads, thresholded)", "attention/"),
                         ("a random object", "random_object/"), ("centre prior", "centre_prior/")):
        if prefix + "recall" not in gcg or prefix + "giou" not in reason:
            continue
        lines.append(f"| {name} | {100 * gcg[prefix + 'recall']:.1f} | {100 * gcg[prefix + 'miou']:.1f} | "
                     f"{100 * gcg[prefix + 'ap50']:.1f} | {100 * reason[prefix + 'giou']:.1f} | {100 * reason[prefix + 'ciou']:.1f} |")
    lines += ["", "GLaMM's mIoU and AP50 pair predicted masks with objects whatever the phrase says, so a random object's "
                  "exact mask scores high there; recall, which also asks that the phrase fit the object, is the measure of "
                  "grounding the right thing.",
              "", f"The descriptions name each object's size / colour / shape {gcg['caption_size']:.3f} / "
                  f"{gcg['caption_colour']:.3f} / {gcg['caption_shape']:.3f}; reasoning answers are right "
                  f"{reason['answer_accuracy']:.3f} of the time (superlatives {reason.get('superlative/answer_accuracy', float('nan')):.3f}, "
                  f"negations {reason.get('negation/answer_accuracy', float('nan')):.3f})."]
    return lines + ["", *_chain_of_thought(run)]


def _chain_of_thought(run: Path) -> list[str]:
    cot = _json(run, "cot.json")
    if cot is None:
        return ["(no cot.json)"]
    kinds = [k for k in ("colour", "shape", "size") if f"{k}/direct" in cot]
    lines = [f"Visual chain of thought on {cot['questions']} questions about one object of wide scenes (objects a "
             "quarter of their usual size in the model's view): answered on the whole image, on a crop around the object "
             "grounded from the question's phrase, and on the same crop around the object's true mask (the most grounding "
             f"could give). The grounded crop holds the object {cot['in_crop']:.3f} of the time "
             f"({cot['empty_mask']} empty masks).", "",
             "| answer accuracy | all | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for way, name in (("direct", "whole image"), ("cot", "grounded crop (chain of thought)"), ("oracle", "crop around the true mask")):
        lines.append(f"| {name} | {cot[way + '/accuracy']:.3f} | " + " | ".join(f"{cot[f'{k}/{way}']:.3f}" for k in kinds) + " |")
    return lines


def results_markdown(run_dir: str | Path) -> str:
    """The results page of a demo run folder (see the module docstring)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"No run folder {run}: run `flmm-probe demo --out {run}` first.")
    meta = _json(run, "run.json") or {}
    metrics = _json(run, "metrics.json")
    lines = ["# Results", "",
             f"Made by `flmm-probe report {run}` from the run folder of `flmm-probe demo` "
             + (f"(organism `{meta.get('variant')}`, {meta.get('scenes')} held-out and {meta.get('train_scenes')} train "
                f"scenes, {meta.get('epochs')} fit epochs, {meta.get('threads')} torch threads, torch {meta.get('torch')})"
                if meta else "") + ". Every number below is read from that folder.", "",
             "## Where grounding lives", "", *_grounding(run), "",
             "## Words or position", "", *_counterfactual(run), "",
             "The same on scenes drawn by other code (`shapes:redrawn`: the same words, another rasteriser, placement "
             "and background; `data.redrawn`):", "",
             *_counterfactual(run, "analysis/redrawn", "The captions of {n} scenes drawn by other code"), "",
             "## Attention alone (training-free masks from the top heads)", "", *_training_free(run), "",
             "## The fitted decoder (coarse U-Net, refined by SAM), held-out split", "",
             "```", (format_table(metrics).rstrip() if metrics else "(no metrics.json)"), "```", "",
             "## Grounded applications", "", *_applications(run), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`flmm-probe report RUN_DIR`: print the run folder's results page (Markdown)."""
    import argparse

    parser = argparse.ArgumentParser(prog="flmm-probe report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a folder written by `flmm-probe demo`")
    args = parser.parse_args(argv)
    print(results_markdown(args.run_dir), end="")
    return 0
