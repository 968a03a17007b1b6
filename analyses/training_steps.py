"""Grounding vs training step: score the organism's checkpoints on the same samples.

    frame = training_steps_frame("small", open_dataset("shapes:test:64:caption"))
    frame.columns: step sample phrase layer head metric value [+ attributes]

Each shipped checkpoint (`flmm_probe.organism.shipped_steps`) records the samples once, in memory, and
is scored like any record; `figures/training_steps.py` draws the result (training_steps.parquet).
"""

from __future__ import annotations

import json

import pandas as pd
from tqdm.auto import tqdm

from flmm_probe.backbones import load_backbone
from flmm_probe.data.samples import GroundingDataset
from flmm_probe.organism import load_organism, organism_path, shipped_steps

from .score import ScoredSample, score_records


def training_steps_frame(
    variant: str, dataset: GroundingDataset, steps: list[int] | None = None, batch_size: int = 8, progress: bool = True
) -> pd.DataFrame:
    """Score frame of every checkpoint in `steps` (default: all shipped ones) and of the final model,
    labelled with the total step its training.json records."""
    samples = list(dataset)
    if not samples:
        raise ValueError("The dataset has no good sample to score.")
    steps = shipped_steps(variant) if steps is None else steps
    frames = []
    meta = json.loads((organism_path(variant) / "training.json").read_text())
    final_step = meta.get("first_step", 0) + meta["step"]  # a continued run counts on from where it started
    for step in tqdm([*steps, None], disable=not progress, desc="checkpoints", unit="step"):
        backbone = load_backbone(*load_organism(variant, step))
        records = backbone.record_batch([(s.image(), s.text, s.spans) for s in samples], batch_size=batch_size)
        scored = [
            ScoredSample(s.sample_id, r, list(s.masks()), [{"plural": p.plural, "is_thing": p.is_thing} for p in s.phrases])
            for s, r in zip(samples, records)
        ]
        frame = score_records(scored)
        frame.insert(0, "step", final_step if step is None else step)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
