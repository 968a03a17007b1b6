"""The organism SAM: promptable-segmentation training on the shapes world, saving, loading, mIoU.

Training follows SAM's recipe in small: per image, several targets (objects, sometimes stuff), each
prompted by a jittered box or by positive/negative points; with a single point the decoder answers
with three masks and only the best one is penalised; a second, interactive pass feeds the first
pass's low-res logits back as a mask prompt plus a corrective point from the error region. Loss:
20 * focal + dice on the masks, plus MSE of the IoU head. The encoder grid is IMAGE_SIZE / 4, so the
decoder's low-res masks (4x the grid) are exactly image-sized.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from segment_anything.modeling import Sam

from flmm_probe.data.shapes import Scene
from flmm_probe.organism.build import SamConfig, build_sam

TARGETS_PER_IMAGE = 4


def box_of(mask: np.ndarray) -> np.ndarray:
    """Tight XYXY box of a (H, W) bool mask in pixel-edge coordinates: (x_min, y_min, x_max + 1, y_max + 1)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def _targets(scene: Scene, rng: np.random.Generator) -> list[np.ndarray]:
    stuff = [m for m in scene.stuff_masks.values() if m.any()]
    out = []
    for _ in range(TARGETS_PER_IMAGE):
        if stuff and rng.random() < 0.2:
            out.append(stuff[int(rng.integers(len(stuff)))])
        else:
            out.append(scene.objects[int(rng.integers(len(scene.objects)))].mask)
    return out


def _points(mask: np.ndarray, rng: np.random.Generator, n: int, positive: bool) -> np.ndarray:
    """n pixel centres (x, y) drawn from mask (positive) or its complement."""
    ys, xs = np.nonzero(mask if positive else ~mask)
    pick = rng.integers(len(xs), size=n)
    return np.stack([xs[pick] + 0.5, ys[pick] + 0.5], axis=1).astype(np.float32)


def _jitter(box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    return box + np.clip(rng.normal(0, 0.07, size=4) * side, -3, 3).astype(np.float32)


def _mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits: (K, M, H, W); target: (K, 1, H, W) float. Returns (K, M) focal*20 + dice."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    alpha = 0.25 * target + 0.75 * (1 - target)
    focal = (alpha * (1 - pt) ** 2 * ce).mean(dim=(2, 3))
    inter = (p * target).sum(dim=(2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
    return 20 * focal + dice


def _iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(K, M) IoU of the thresholded logits (K, M, H, W) with target (K, 1, H, W)."""
    pred = logits > 0
    t = target.bool()
    inter = (pred & t).sum(dim=(2, 3)).float()
    union = (pred | t).sum(dim=(2, 3)).float()
    return inter / union.clamp(min=1)


def _decode(sam: Sam, emb: torch.Tensor, points, boxes, masks, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
    return sam.mask_decoder(
        image_embeddings=emb,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def sam_loss_on_batch(sam: Sam, scenes: list[Scene], rng: np.random.Generator) -> torch.Tensor:
    """Mean promptable-segmentation loss of ``sam`` over ``TARGETS_PER_IMAGE`` targets per scene."""
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() for s in scenes])
    emb = sam.image_encoder(sam.preprocess(images))  # (batch, C, grid, grid)
    losses = []
    for b, scene in enumerate(scenes):
        masks = _targets(scene, rng)
        target = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))  # (K, 1, H, W)
        use_box = rng.random() < 0.5
        if use_box:
            boxes = torch.from_numpy(np.stack([_jitter(box_of(m), rng) for m in masks]))
            points, multimask = None, False
        else:
            n_pos = int(rng.integers(1, 4))
            n_neg = int(rng.integers(0, 2)) if n_pos > 1 else 0
            coords = [np.concatenate([_points(m, rng, n_pos, True), _points(m, rng, n_neg, False)]) for m in masks]
            labels = torch.tensor([[1] * n_pos + [0] * n_neg] * len(masks))
            points, boxes, multimask = (torch.from_numpy(np.stack(coords)), labels), None, n_pos == 1
        logits, iou_pred = _decode(sam, emb[b : b + 1], points, boxes, None, multimask)
        loss = _mask_loss(logits, target)
        best = loss.argmin(dim=1)
        k = torch.arange(len(masks))
        iou_true = _iou(logits.detach(), target)
        losses.append(loss[k, best] + F.mse_loss(iou_pred, iou_true, reduction="none").mean(dim=1))
        if rng.random() < 0.5:  # interactive pass: previous logits + one corrective point
            prev = logits[k, best][:, None].detach()
            err = (prev[:, 0] > 0).numpy() != target[:, 0].bool().numpy()
            fix, fix_label = [], []
            for m, e in zip(masks, err):
                region = e if e.any() else m
                fix.append(_points(region, rng, 1, True))
                fix_label.append(1 if m[int(fix[-1][0, 1]), int(fix[-1][0, 0])] else 0)
            fix_pts = torch.from_numpy(np.stack(fix))
            fix_lab = torch.tensor(fix_label)[:, None]
            if points is None:
                points2 = (fix_pts, fix_lab)
            else:
                points2 = (torch.cat([points[0], fix_pts], 1), torch.cat([points[1], fix_lab], 1))
            logits2, iou2 = _decode(sam, emb[b : b + 1], points2, boxes, prev, False)
            losses.append(_mask_loss(logits2, target)[:, 0] + (iou2[:, 0] - _iou(logits2.detach(), target)[:, 0]) ** 2)
    return torch.cat(losses).mean()


def save_sam(sam: Sam, cfg: SamConfig, path: Path, meta: dict | None = None) -> None:
    """``path/model.safetensors`` (float16) + ``path/config.json`` (the SamConfig and training meta)."""
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in sam.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"sam_config": asdict(cfg), "training": meta or {}}, indent=1))


def saved_sam_config(path: Path) -> SamConfig:
    """The SamConfig that ``save_sam`` wrote at ``path``; one saved before ``SamConfig.window`` existed
    attended globally in every block."""
    saved = {"window": 0, "global_layers": (), **json.loads((path / "config.json").read_text())["sam_config"]}
    return SamConfig(**{**saved, "global_layers": tuple(saved["global_layers"])})


def load_saved_sam(path: Path) -> Sam:
    """The Sam saved by ``save_sam`` at ``path``, float32, in eval mode."""
    sam = build_sam(saved_sam_config(path))
    state = {k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()}
    sam.load_state_dict(state)
    return sam.eval()


@torch.no_grad()
def box_miou(sam: Sam, scenes: list[Scene]) -> float:
    """Mean IoU over all objects of ``scenes`` of Sam.forward's single mask for the object's tight box."""
    ious = []
    for scene in scenes:
        masks = np.stack([o.mask for o in scene.objects])
        batched = [{
            "image": torch.from_numpy(scene.image).permute(2, 0, 1).float(),
            "original_size": scene.image.shape[:2],
            "boxes": torch.from_numpy(np.stack([box_of(m) for m in masks])),
        }]
        pred = sam(batched, multimask_output=False)[0]["masks"][:, 0].numpy()  # (K, H, W) bool
        inter = (pred & masks).sum(axis=(1, 2))
        union = (pred | masks).sum(axis=(1, 2))
        ious.extend((inter / union).tolist())
    return float(np.mean(ious))
