"""Stage 0: pretrain the organism's CLIP vision tower on the shapes world, as LLaVA starts from a pretrained CLIP.

Trained through the LM alone, a from-scratch vision tower learns colour and size but recognises shape
slowly (shape is the bottleneck). So, as real LLaVA starts from a pretrained CLIP, the tower is first
trained on its own with dense labels: every patch token of the layer LLaVA reads (the last hidden
state, CLS dropped) is classified into the shape, colour and size of the object that covers most of
the patch, or "none". The heads are thrown away; only the tower goes on to LLaVA training.
With ``rank=True`` a fourth head also tells the owner's place in the left-to-right order of the objects.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm
from transformers import CLIPImageProcessor, CLIPVisionModel

from flmm_probe.data.shapes import COLOURS, IMAGE_SIZE, MAX_OBJECTS, SHAPES, SIZES, Scene, make_scene

log = logging.getLogger(__name__)
ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES}
# The owner's rank left to right (0 = leftmost), an optional fourth target (train.Recipe.rank_target, off for
# the shipped organisms: texts that list objects by rank would let a model find the k-th object listed by
# its rank instead of its words).
RANK = "rank"
# A patch is labelled with the object that covers at least half of it, as the pointing game counts a cell
# inside an object; an object too small to cover half of any patch owns its most-covered patches, so that
# no object is invisible. (With 1/8, border patches looked like the object's interior and the LM's
# attention spread onto them.)
MIN_COVER = 0.5
SCORE_SCENES = 200  # val scenes on which the finished pretraining is scored (train.py logs the LMM on its own EVAL_SCENES)


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, params, clip: float = 1.0) -> None:
    """Backpropagate `loss`, clip the gradients' L2 norm to `clip`, and step `opt`."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def patch_labels(scene: Scene, patch: int, rank: bool = False) -> dict[str, torch.Tensor]:
    """Per attribute (and ``RANK`` if ``rank``), (grid * grid,) int64 class of each patch's owner
    (row-major); the number of classes (len(values), ``MAX_OBJECTS``) stands for none."""
    grid = IMAGE_SIZE // patch
    cover = np.stack([rearrange(o.mask, "(gy py) (gx px) -> (gy gx) (py px)", py=patch, px=patch).mean(-1) for o in scene.objects])
    owner = np.where(cover.max(0) >= MIN_COVER, cover.argmax(0), -1)
    for i, c in enumerate(cover):
        if c.max() < MIN_COVER:
            owner[(c == c.max()) & (owner < 0)] = i
    out = {}
    for name, values in ATTRIBUTES.items():
        cls = np.array([values.index(getattr(o, name)) for o in scene.objects])[np.maximum(owner, 0)]
        out[name] = torch.from_numpy(np.where(owner >= 0, cls, len(values)).astype(np.int64))
    if rank:  # scene.objects are listed left to right
        out[RANK] = torch.from_numpy(np.where(owner >= 0, owner, MAX_OBJECTS).astype(np.int64))
    assert out["shape"].shape == (grid * grid,)
    return out


def pretrain_vision(tower: CLIPVisionModel, image_processor: CLIPImageProcessor, patch: int, steps: int, batch: int,
                    lr: float, seed: int, rank: bool = False) -> dict[str, float]:
    """Train ``tower`` in place on patch labels (with ``RANK`` if ``rank``); returns per-target accuracy on
    the object patches of ``SCORE_SCENES`` val scenes (the "none" patches, most of an image, would hide how
    well shape is told)."""
    width = tower.config.hidden_size
    classes = {name: len(values) + 1 for name, values in ATTRIBUTES.items()} | ({RANK: MAX_OBJECTS + 1} if rank else {})
    heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in classes.items()}).to(tower.device)
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    tower.train()
    start = time.time()
    for step in tqdm(range(steps), desc="vision pretraining", disable=None):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * (1 - step / steps))
        scenes = [make_scene("train", step * batch + i, seed + 2) for i in range(batch)]
        pixels = image_processor(images=[s.image for s in scenes], return_tensors="pt")["pixel_values"]
        tokens = tower(pixel_values=pixels.to(tower.device)).last_hidden_state[:, 1:]  # (batch, grid*grid, width)
        labels = [patch_labels(s, patch, rank) for s in scenes]
        loss = torch.zeros((), device=tower.device)
        for name, head in heads.items():
            target = torch.stack([lab[name] for lab in labels]).to(tower.device)  # (batch, grid*grid)
            loss = loss + F.cross_entropy(head(tokens).flatten(0, 1), target.flatten())
        optimizer_step(loss, opt, params)
        if step % 50 == 0:
            log.info("vision step %d loss %.4f (%.0fs)", step, loss.item(), time.time() - start)
    accuracy = object_patch_accuracy(tower, heads, image_processor, patch, [make_scene("val", i, seed) for i in range(SCORE_SCENES)])
    log.info("vision pretraining done: object-patch accuracy %s", accuracy)
    return accuracy


@torch.no_grad()
def object_patch_accuracy(tower: CLIPVisionModel, heads: nn.ModuleDict, image_processor: CLIPImageProcessor, patch: int,
                          scenes: list[Scene]) -> dict[str, float]:
    """Per target, the heads' accuracy on the patches that an object owns (``patch_labels``)."""
    was_training = tower.training
    pixels = image_processor(images=[s.image for s in scenes], return_tensors="pt")["pixel_values"]
    tokens = tower.eval()(pixel_values=pixels.to(tower.device)).last_hidden_state[:, 1:]  # (scenes, grid*grid, width)
    tower.train(was_training)
    per_scene = [patch_labels(s, patch, RANK in heads) for s in scenes]
    labels = {name: torch.stack([lab[name] for lab in per_scene]).to(tokens.device) for name in heads}  # each (scenes, grid*grid)
    owned = labels["shape"] < len(SHAPES)  # (scenes, grid*grid)
    return {name: (head(tokens).argmax(-1) == labels[name])[owned].float().mean().item()
            for name, head in heads.items()}
