"""Grounding vs training step on the shipped organism checkpoints."""

from analyses.training_steps import training_steps_frame
from flmm_probe.data.sources import ShapesGrounding
from flmm_probe.organism import shipped_steps


def test_every_checkpoint_and_the_final_model_are_scored():
    frame = training_steps_frame("small", ShapesGrounding("test", 2, "caption"), progress=False)
    steps = sorted(frame["step"].unique())
    assert steps[:-1] == shipped_steps("small") and steps[-1] > steps[-2]
    per_step = frame.groupby("step")["value"].size()
    assert per_step.nunique() == 1  # the same phrases, layers, heads and metrics at every step
