"""Do the organism's LLaVA training steps compute the same bits on one thread and on two, on this machine?

    python benchmarks/thread_exactness.py     # the environment and, per variant, "bitwise" or the max difference

`flmm-probe organism train` hands a finished job's threads to the LLaVA stages still running; the shipped
weights reproduce bit for bit only where the answer is "bitwise" for every variant. The test suite checks
the weaker property that holds on every machine (agreement to float32 rounding).
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from checks import llava_steps  # noqa: E402  (the test suite's own helper, on the path just set)

from flmm_probe.organism.build import VARIANTS  # noqa: E402


def main() -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    out = {"torch": torch.__version__, "cpu": cpu, "capability": torch.backends.cpu.get_cpu_capability()}
    for variant in VARIANTS:
        one, two = llava_steps(variant, 1), llava_steps(variant, 2)
        same = all(torch.equal(a, b) for a, b in zip(one, two))
        out[variant] = "bitwise" if same else f"max difference {max((a - b).abs().max().item() for a, b in zip(one, two)):.3g}"
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
