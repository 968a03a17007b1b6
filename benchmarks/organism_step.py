"""One LLaVA training step of an organism variant, float32 against bfloat16 autocast (``--autocast``).

The step of ``flmm-probe organism train``: a batch of fresh train scenes made into conversations
(``train.lmm_batch``), the forward pass, backward, gradient clipping and AdamW, the vision tower frozen.
Both precisions run from the same initial weights on the same batches, interleaved step by step, so the
machine's drift falls on both; the median of each is reported. With ``--beside VARIANT`` a second process
trains that variant in float32 meanwhile, one thread each, as the default command runs two models at once.
With ``--patch P`` the variant with P-pixel patches (a grid of (IMAGE_SIZE / P) ** 2 image tokens) steps in
float32 among them: what a finer grid costs.

    python benchmarks/organism_step.py --steps 30 --out docs/organism_step.json
    python benchmarks/organism_step.py --steps 30 --beside coarse --out docs/organism_step_beside.json
    python benchmarks/organism_step.py --steps 10 --patch 4 --out docs/organism_step_patch4.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import platform
import statistics
import time

import torch

from flmm_probe.data.shapes import IMAGE_SIZE
from flmm_probe.organism.build import VARIANTS, build_lmm, build_processor
from flmm_probe.organism.train import lmm_batch, text_recipe
from flmm_probe.organism.vision import optimizer_step


class Trainer:
    """A variant's LLaVA stage from seed 0 (untrained tower, frozen), stepping on its recipe's batches."""

    def __init__(self, variant: str, autocast: bool, patch: int | None = None) -> None:
        cfg = dataclasses.replace(VARIANTS[variant], patch=patch or VARIANTS[variant].patch)
        self.variant, self.autocast = variant, autocast
        self.processor = build_processor(cfg.patch)
        self.n_image_tokens = (IMAGE_SIZE // cfg.patch) ** 2
        torch.manual_seed(0)
        self.model = build_lmm(cfg, self.processor.tokenizer)
        self.model.model.vision_tower.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-3)

    def step(self, step: int) -> float:
        """Seconds of one training step, batch making included."""
        start = time.perf_counter()
        inputs = lmm_batch(step, 32, 1, self.processor, self.n_image_tokens, text_recipe(self.variant))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.model(**inputs).loss
        optimizer_step(loss, self.opt, self.params)
        return time.perf_counter() - start


def _beside(variant: str, ready: multiprocessing.Event, stop: multiprocessing.Event) -> None:
    torch.set_num_threads(1)
    trainer, step = Trainer(variant, autocast=False), 0
    trainer.step(step)
    ready.set()
    while not stop.is_set():
        trainer.step(step)
        step += 1


def write_result(result: dict, out: str | None) -> None:
    """Print ``result`` as JSON, and write it to ``out`` if given."""
    print(json.dumps(result, indent=1))
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="small", choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per precision (after 2 warm-up steps)")
    parser.add_argument("--beside", choices=list(VARIANTS), help="train this variant in a second process meanwhile")
    parser.add_argument("--patch", type=int, help="also step the variant with patches of this many pixels, in float32")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trainers = {"float32": Trainer(args.variant, autocast=False), "bfloat16": Trainer(args.variant, autocast=True)}
    if args.patch:
        trainers[f"float32, patch {args.patch}"] = Trainer(args.variant, autocast=False, patch=args.patch)
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    other = None
    if args.beside:  # timing starts once the other process trains
        other = context.Process(target=_beside, args=(args.beside, ready, stop))
        other.start()
        ready.wait()
    times: dict[str, list[float]] = {name: [] for name in trainers}
    try:
        for step in range(args.steps + 2):
            for name, trainer in trainers.items():
                seconds = trainer.step(step)
                if step >= 2:
                    times[name].append(seconds)
    finally:
        stop.set()
        if other is not None:
            other.join()
    result = {
        "variant": args.variant, "beside": args.beside, "steps": args.steps, "threads": 1,
        "median_seconds": {name: statistics.median(t) for name, t in times.items()},
        "bfloat16_over_float32": statistics.median(times["bfloat16"]) / statistics.median(times["float32"]),
        **({f"patch_{args.patch}_over_float32": statistics.median(times[f"float32, patch {args.patch}"])
            / statistics.median(times["float32"])} if args.patch else {}),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
