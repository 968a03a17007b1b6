"""Do the organism's LLaVA training steps compute the same bits on one thread and on two, on this machine?

    python benchmarks/thread_exactness.py          # prints the environment and, per variant, "bitwise" or the max difference

`flmm-probe organism train` hands a finished job's threads to the LLaVA stages still running; the shipped
weights reproduce bit for bit only where the answer is "bitwise" for every variant. The test suite checks
the weaker property that holds on every machine (agreement to float32 rounding).
"""

from __future__ import annotations

import json
import platform

import torch

from flmm_probe.organism.build import VARIANTS, build_lmm, build_processor
from flmm_probe.organism.train import BATCH, lmm_batch, text_recipe
from flmm_probe.organism.vision import optimizer_step
from flmm_probe.data.shapes import IMAGE_SIZE


def steps(variant: str, threads: int, n: int = 2) -> list[torch.Tensor]:
    """The trainable parameters after ``n`` full-batch LLaVA steps of ``variant``'s recipe on ``threads`` threads."""
    processor = build_processor(VARIANTS[variant].patch)
    torch.manual_seed(0)
    model = build_lmm(VARIANTS[variant], processor.tokenizer)
    model.model.vision_tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    torch.set_num_threads(threads)
    for step in range(n):
        inputs = lmm_batch(step, BATCH, 1, processor, (IMAGE_SIZE // VARIANTS[variant].patch) ** 2, text_recipe(variant))
        optimizer_step(model(**inputs).loss, opt, params)
    return [p.detach().clone() for p in params]


def main() -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    out = {"torch": torch.__version__, "cpu": cpu, "capability": torch.backends.cpu.get_cpu_capability()}
    for variant in VARIANTS:
        one, two = steps(variant, 1), steps(variant, 2)
        same = all(torch.equal(a, b) for a, b in zip(one, two))
        out[variant] = "bitwise" if same else f"max difference {max((a - b).abs().max().item() for a, b in zip(one, two)):.3g}"
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
