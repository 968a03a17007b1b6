"""How good can the coarse masks get on a given grid? The fit's U-Net trained on perfect maps.

`training_free.grid_oracle` decodes each phrase's true mask pooled to the grid the way the heads' maps
are decoded (bilinear upsampling, threshold at half the peak). The fitted decoder is not bound to that
decoding: from how much of each cell an object covers it can place edges inside cells. This trains the
fit's `MaskDecoder` on one channel, the pooled true mask, with the fit's loss and schedule, and scores
its masks on held-out phrases: what the coarse masks of any LMM with that grid could reach at best.

    python -m analyses.grid_ceiling --grid 5 10 --train 600 --test 100   # RES of the shapes world

With `--levels 0.5` the U-Net sees only whether each cell is at least half covered (levels 0.25 0.5:
three steps, and so on): the ceiling of maps that quantise coverage, as the organism's do (its attention
is flat below a quarter of a patch covered and saturates above a half, docs/results.md).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from flmm_probe.data.shapes import make_scene
from flmm_probe.decoder.objective import lr_factor, mask_loss
from flmm_probe.decoder.unet import MaskDecoder, UNetConfig, resize_logits
from flmm_probe.metrics import intersection_union, mask_to_grid, res_scores


def learned_grid_oracle(train_masks: Sequence[np.ndarray], test_masks: Sequence[np.ndarray], grid: tuple[int, int],
                        epochs: int = 6, batch_size: int = 8, lr: float = 1e-3, base_channels: int = 16,
                        long_side: int = 32, warmup_ratio: float = 0.03, seed: int = 0,
                        levels: Sequence[float] = ()) -> dict[str, float]:
    """RES scores (cIoU, gIoU, P@0.5..0.9) of a U-Net fitted to map pooled masks back to the masks.

    train_masks, test_masks: (H, W) bool masks, all of one image size. The defaults are the CPU-sized
    decoder of docs/results.md's fits (the paper's lr is 1e-4 for 8 epochs of far more phrases).
    levels: coverage thresholds; if given, each cell's coverage is replaced by the fraction of them it
        reaches (levels (0.5,): 1 where at least half covered, else 0).
    """
    if len(train_masks) < batch_size or not len(test_masks):
        raise ValueError(f"learned_grid_oracle needs at least batch_size={batch_size} train masks and one test mask, "
                         f"got {len(train_masks)} and {len(test_masks)}: pass more scenes.")
    torch.manual_seed(seed)
    size = tuple(train_masks[0].shape)
    x = pooled_coverage(train_masks, grid, levels)  # (n, 1, y, x)
    y = torch.as_tensor(np.stack(train_masks)).float()  # (n, H, W)
    decoder = MaskDecoder(UNetConfig(1, base_channels=base_channels, long_side=long_side))
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.01)
    steps_per_epoch = len(x) // batch_size
    total = epochs * steps_per_epoch
    for step in tqdm(range(total), desc=f"grid ceiling {grid[0]}x{grid[1]}", disable=None):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(x))
        batch = order[(step % steps_per_epoch) * batch_size:][:batch_size]
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, total, warmup_ratio)
        bce, dice = mask_loss(resize_logits(decoder(x[batch]), size), y[batch])
        opt.zero_grad(set_to_none=True)
        (bce + dice).mean().backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
    with torch.no_grad():
        pred = resize_logits(decoder(pooled_coverage(test_masks, grid, levels)), size) > 0
    iu = np.array([intersection_union(p.numpy(), t) for p, t in zip(pred, test_masks)])
    return res_scores(iu[:, 0], iu[:, 1])


def pooled_coverage(masks: Sequence[np.ndarray], grid: tuple[int, int], levels: Sequence[float] = ()) -> torch.Tensor:
    """(n, 1, y, x) coverage of each grid cell, quantised to `levels` if any."""
    cover = mask_to_grid(np.stack(masks), grid)[:, None]
    if not levels:
        return cover
    # A referent that covers no cell enough leaves an all-zero map: the decoder sees nothing of it, as it
    # would of a referent the maps miss.
    return sum((cover >= t).float() for t in levels) / len(levels)


def main(argv: list[str] | None = None) -> int:
    """Learned grid oracle of the shapes world's referring expressions, as JSON per grid."""
    p = argparse.ArgumentParser(prog="python -m analyses.grid_ceiling", description=main.__doc__)
    p.add_argument("--grid", type=int, nargs="+", default=[5, 10], help="square grid sizes to score")
    p.add_argument("--train", type=int, default=600, help="train scenes (their expressions' masks)")
    p.add_argument("--test", type=int, default=100, help="test scenes")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--levels", type=float, nargs="*", default=[],
                   help="quantise each cell's coverage to these thresholds (0.5: at least half covered or not)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # small convolutions: one thread is as fast and leaves the other cores free
    train = [e.mask for i in range(args.train) for e in make_scene("train", i).expressions]
    test = [e.mask for i in range(args.test) for e in make_scene("test", i).expressions]
    out = {f"{g}x{g}": learned_grid_oracle(train, test, (g, g), epochs=args.epochs, levels=args.levels)
           for g in args.grid}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
