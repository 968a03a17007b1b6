"""Training-free vs fitted masks: image, ground truth and each method's mask per sample, with IoUs.

Takes arrays only, so it does not care how the masks were made:

    fig = masks_figure(images, truth, {"training_free": tf, "unet": coarse, "sam": refined})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from flmm_probe.metrics import intersection_union

from .style import FULL_WIDTH, OKABE_ITO, RC, image_rgb, save

# prediction key -> column title, in display order; other keys are shown after these under their own name
MASK_COLUMNS = {"training_free": "training-free", "unet": "U-Net (coarse)", "sam": "SAM (refined)"}
TRUTH_FILL = OKABE_ITO["bluish_green"]
PREDICTION_FILL = OKABE_ITO["blue"]
TRUTH_CONTOUR = OKABE_ITO["orange"]


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks; 1 when both are empty."""
    intersection, union = intersection_union(prediction, truth)
    return intersection / union if union else 1.0


def _filled(rgb: np.ndarray, mask: np.ndarray, colour: str, alpha: float = 0.55) -> np.ndarray:
    """(H, W, 3) image with `mask` painted in `colour` at opacity `alpha`."""
    out = rgb.copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(to_rgba(colour)[:3])
    return out


def masks_figure(
    images: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    predictions: Mapping[str, Sequence[np.ndarray]],
    names: Sequence[str] | None = None,
) -> Figure:
    """One row per sample: image, ground truth, then each prediction titled with its IoU.

    images: per sample (H, W, 3) uint8 or float in [0, 1]; truth: per sample (H, W) bool; predictions:
    {method: per sample (H, W) bool}, keys of MASK_COLUMNS get their display names; names: row labels.
    Prediction panels show the predicted mask filled and the ground truth as a contour.
    """
    n = len(images)
    if len(truth) != n or any(len(p) != n for p in predictions.values()):
        raise ValueError(f"{n} images but {len(truth)} truths and {[len(p) for p in predictions.values()]} predictions.")
    methods = [m for m in MASK_COLUMNS if m in predictions] + [m for m in predictions if m not in MASK_COLUMNS]
    scores = {m: [iou(np.asarray(p, bool), np.asarray(t, bool)) for p, t in zip(predictions[m], truth)] for m in methods}
    ncols = 2 + len(methods)
    height, width = np.asarray(images[0]).shape[:2]
    panel = FULL_WIDTH / ncols
    with rc_context(RC):
        fig = Figure(figsize=(FULL_WIDTH, n * (panel * height / width + 0.2) + 0.55), layout="constrained")
        axes = fig.subplots(n, ncols, squeeze=False)
        for row in range(n):
            rgb, target = image_rgb(images[row]), np.asarray(truth[row], bool)
            axes[row, 0].imshow(rgb)
            axes[row, 1].imshow(_filled(rgb, target, TRUTH_FILL))
            if row == 0:
                axes[row, 0].set_title("image")
                axes[row, 1].set_title("ground truth")
            for col, method in enumerate(methods, start=2):
                ax = axes[row, col]
                ax.imshow(_filled(rgb, np.asarray(predictions[method][row], bool), PREDICTION_FILL))
                if target.any():
                    ax.contour(target, levels=[0.5], colors=[TRUTH_CONTOUR], linewidths=0.8)
                label = f"{MASK_COLUMNS.get(method, method)}\n" if row == 0 else ""
                ax.set_title(f"{label}IoU {scores[method][row]:.2f}")
            for ax in axes[row]:
                ax.set_xticks([])
                ax.set_yticks([])
                ax.spines[:].set_visible(False)
            if names is not None:
                axes[row, 0].set_ylabel(str(names[row]))
        means = ", ".join(f"{MASK_COLUMNS.get(m, m)} {np.mean(scores[m]):.2f}" for m in methods)
        fig.suptitle(
            f"Masks of n = {n} samples (examples, no CI); mean IoU: {means}\n"
            "filled: predicted mask; contour: ground truth"
        )
    return fig


def write_masks(
    images: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    predictions: Mapping[str, Sequence[np.ndarray]],
    path_stem: str | Path,
    **options: object,
) -> list[Path]:
    """Render `masks_figure(...)` to path_stem.pdf and .png."""
    return save(masks_figure(images, truth, predictions, **options), path_stem)
