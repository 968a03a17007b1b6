"""One training step of the organism SAM: global attention at batch 8 against
windowed attention (``SamConfig.window``) at batch 8 and at batch 6 (today's defaults).

The step of ``flmm-probe organism train``'s SAM stage: fresh train scenes, ``sam_loss_on_batch`` (box and
point prompts, the interactive second pass), backward, gradient clipping and AdamW. The settings run from
their own initial weights on the same scenes, interleaved step by step, one thread, so the machine's drift
falls on all of them; the median of each is reported.

    python benchmarks/organism_sam_step.py --steps 20 --out docs/organism_sam_step.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from flmm_probe.data.shapes import make_scene
from flmm_probe.organism.build import SamConfig, build_sam
from flmm_probe.organism.sam import sam_loss_on_batch
from flmm_probe.organism.vision import optimizer_step
from organism_step import write_result  # benchmarks/ is on the path of a script run from it

SETTINGS = {  # name: (window, global layers, batch)
    "global, batch 8": (0, (), 8),
    "window 10, batch 8": (10, (2,), 8),
    "window 10, batch 6": (10, (2,), 6),
}


class Trainer:
    def __init__(self, window: int, global_layers: tuple[int, ...], batch: int) -> None:
        torch.manual_seed(0)
        self.sam = build_sam(SamConfig(window=window, global_layers=global_layers)).train()
        self.opt = torch.optim.AdamW(self.sam.parameters(), lr=1e-3, weight_decay=0.01)
        self.batch = batch

    def step(self, step: int) -> float:
        """Seconds of one training step, scene making included."""
        start = time.perf_counter()
        scenes = [make_scene("train", step * self.batch + i, 1) for i in range(self.batch)]
        loss = sam_loss_on_batch(self.sam, scenes, np.random.default_rng([0, step, 1]))
        optimizer_step(loss, self.opt, self.sam.parameters())
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting (after 2 warm-up steps)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trainers = {name: Trainer(*setting) for name, setting in SETTINGS.items()}
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for step in range(args.steps + 2):
        for name, trainer in trainers.items():
            seconds = trainer.step(step)
            if step >= 2:
                times[name].append(seconds)
    baseline = statistics.median(times["global, batch 8"])
    result = {
        "steps": args.steps, "threads": 1,
        "median_seconds": {name: statistics.median(t) for name, t in times.items()},
        "over_global_batch_8": {name: statistics.median(t) / baseline for name, t in times.items()},
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
