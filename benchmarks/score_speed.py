"""Scoring speed: every layer x head map of many phrases against their masks, through analyses.score.

The issue's case: 1,000 phrases of a 32-layer x 32-head model at 24x24 (about 1M maps), all six map
metrics, into the tidy DataFrame. Records are synthetic (random maps, one square mask per phrase), made
lazily so that memory holds one sample at a time; their generation is timed apart and excluded.

    python benchmarks/score_speed.py --phrases 1000 --out docs/score_speed.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from analyses.score import ScoredSample, score_records
from flmm_probe.record import AttentionRecord


def samples(n_phrases: int, per_sample: int, layers: int, heads: int, grid: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for s in range(n_phrases // per_sample):
        maps = torch.from_numpy(rng.random((per_sample, layers, heads, grid, grid), dtype=np.float32))
        masks = []
        for _ in range(per_sample):
            mask = np.zeros((grid * 14, grid * 14), bool)
            y, x = rng.integers(0, grid * 10, 2)
            mask[y : y + 40, x : x + 40] = True
            masks.append(mask)
        record = AttentionRecord("t", ["p"] * per_sample, [(0, 1)] * per_sample, {"global": maps}, (grid * 14, grid * 14))
        yield ScoredSample(f"s{s}", record, masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phrases", type=int, default=1000)
    parser.add_argument("--per-sample", type=int, default=4)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--grid", type=int, default=24)
    parser.add_argument("--out")
    args = parser.parse_args()
    shape = (args.phrases, args.per_sample, args.layers, args.heads, args.grid)
    start = time.perf_counter()
    data = list(samples(*shape))
    generated = time.perf_counter() - start
    start = time.perf_counter()
    frame = score_records(data)
    scored = time.perf_counter() - start
    n_maps = args.phrases * args.layers * (args.heads + 1)  # + each layer's head-averaged map
    report = {
        "phrases": args.phrases, "layers": args.layers, "heads": args.heads, "grid": args.grid,
        "maps_scored": n_maps, "rows": len(frame), "seconds": scored, "maps_per_second": n_maps / scored,
        "generation_seconds_excluded": generated, "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
