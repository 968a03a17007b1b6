"""Shared checks for every backbone: the probe against eager attention, and planted patterns for layouts."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from flmm_probe.backbones.base import Backbone, pad_rows
from flmm_probe.probe import AttentionProbe

ATOL = 1e-5


def parameter_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def implementations(model: nn.Module) -> list[tuple[str, str | None]]:
    out = []
    for name, module in model.named_modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation_internal"):
            out.append((name, config._attn_implementation_internal))
            for key in config.sub_configs:
                sub = getattr(config, key, None)
                if sub is not None:
                    out.append((f"{name}.{key}", sub._attn_implementation_internal))
    return out


@torch.no_grad()
def check_probe_against_eager(
    model: nn.Module, inputs: dict, query_positions: torch.Tensor, key_positions: torch.Tensor, atol: float = ATOL
) -> torch.Tensor:
    """The probe's weights equal eager's output_attentions at the same rows and columns; the logits with
    the probe are bit-identical to the model's own implementation; the model is restored afterwards.
    Returns the probe's weights (batch, layer, head, query, key)."""
    before_params, before_impl = parameter_hash(model), implementations(model)
    plain = model(**inputs, use_cache=False).logits
    with AttentionProbe(model, query_positions, key_positions) as probe:
        probed = model(**inputs, use_cache=False).logits
    assert torch.equal(plain, probed), "logits changed with the probe attached"
    assert bool(probe.recorded.all()), f"layers not recorded: {probe.recorded}"
    assert implementations(model) == before_impl, "attention implementation not restored"
    own = model.config.get_text_config()._attn_implementation
    model.set_attn_implementation("eager")
    try:
        eager = model(**inputs, use_cache=False, output_attentions=True)
    finally:
        model.set_attn_implementation(own)
    attentions = torch.stack(eager.attentions, dim=1).float()  # (batch, layer, head, T, T)
    expected = torch.stack(
        [attentions[b][:, :, query_positions[b]][:, :, :, key_positions[b]] for b in range(attentions.shape[0])]
    )
    error = (expected - probe.weights).abs().max().item()
    assert error <= atol, f"probe differs from eager by {error:.3g}"
    assert parameter_hash(model) == before_params, "parameters changed"
    return probe.weights


def check_backbone_against_eager(backbone: Backbone, samples: list, atol: float = ATOL) -> None:
    """Prepare a (padded) batch through the backbone and compare the probe with eager at its positions:
    every phrase token as query, every image token of the layout as key."""
    images, texts, phrases = zip(*samples)
    prep = backbone.prepare(images, texts, phrases)
    queries = pad_rows([torch.cat(t).unique() for t in prep.tokens])
    keys = pad_rows([layout.key_positions for layout in prep.layouts])
    inputs = backbone.model_inputs(prep.inputs)
    image_id = backbone.image_token_id
    for layout, ids in zip(prep.layouts, inputs["input_ids"]):
        positions = layout.key_positions
        assert bool((ids[positions] == image_id).all()), "a layout position is not an image token"
    check_probe_against_eager(backbone.model, inputs, queries, keys, atol)


def local_vision(model: nn.Module, is_vision: Callable[[str], bool]) -> None:
    """Make the vision tower patch-local: zero its attention output projections, so a patch's feature
    depends only on its own pixels (and position), and a planted image patch changes only its tokens."""
    names = ("out_proj", "o_proj", "proj", "projection_layer", "dense")
    with torch.no_grad():
        for name, module in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(module, nn.Linear) and is_vision(name) and ("attn" in name or "attention" in name) and leaf in names:
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()


@torch.no_grad()
def planted_map(backbone: Backbone, size: tuple[int, int], box: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
    """How much each image-space cell's tokens change when a bright square is planted in `box`.

    Feeds a grey image and the same image with a white box (x0, y0, x1, y1 pixels) and measures the change of
    the language model's input embeddings at every image token, painted into image space by the layout.
    Returns {kind: (Y, X)} normalised to sum 1.
    """
    height, width = size
    grey = np.full((height, width, 3), 96, dtype=np.uint8)
    planted = grey.copy()
    x0, y0, x1, y1 = box
    planted[y0:y1, x0:x1] = 255
    captured = []
    decoder = backbone.model.get_decoder()
    hook = decoder.register_forward_pre_hook(lambda m, a, kw: captured.append(kw["inputs_embeds"]), with_kwargs=True)
    try:
        prep = backbone.prepare([grey, planted], ["a red circle", "a red circle"], [["red circle"], ["red circle"]])
        backbone.model(**backbone.model_inputs(prep.inputs), use_cache=False)
    finally:
        hook.remove()
    embeds = captured[0]
    out = {}
    for kind, canvas in _paint(prep, embeds).items():
        out[kind] = canvas / canvas.sum()
    return out


def _paint(prep, embeds: torch.Tensor) -> dict[str, torch.Tensor]:
    grey_layout, planted_layout = prep.layouts
    change = (embeds[1, planted_layout.key_positions] - embeds[0, grey_layout.key_positions]).norm(dim=-1)
    return planted_layout.to_image(change)


def check_planted(backbone: Backbone, size: tuple[int, int], box: tuple[int, int, int, int], min_inside: float = 0.8) -> None:
    """For every view kind: the argmax of the planted change is inside `box`, and most of it is near it."""
    height, width = size
    x0, y0, x1, y1 = box
    for kind, canvas in planted_map(backbone, size, box).items():
        rows, cols = canvas.shape
        cell_h, cell_w = height / rows, width / cols
        r, c = divmod(int(canvas.argmax()), cols)
        cy, cx = (r + 0.5) * cell_h, (c + 0.5) * cell_w
        assert x0 - cell_w <= cx <= x1 + cell_w and y0 - cell_h <= cy <= y1 + cell_h, (
            f"{kind}: peak at ({cx:.0f}, {cy:.0f}) px, planted box {box}"
        )
        # Cells whose area touches the box (dilated by a cell for bilinear painting and patch overlap).
        ys = (torch.arange(rows) + 0.5) * cell_h
        xs = (torch.arange(cols) + 0.5) * cell_w
        near = ((ys >= y0 - 1.5 * cell_h) & (ys <= y1 + 1.5 * cell_h))[:, None] & (
            (xs >= x0 - 1.5 * cell_w) & (xs <= x1 + 1.5 * cell_w)
        )[None, :]
        inside = float(canvas[near].sum())
        assert inside >= min_inside, f"{kind}: only {inside:.2f} of the planted change lies near {box}"


def llava_steps(variant: str, threads: int, steps: int = 2, gradients: bool = False) -> list[torch.Tensor]:
    """The trainable parameters of a fresh organism ``variant`` after ``steps`` LLaVA steps of its recipe at full
    batch, on ``threads`` torch threads (restored afterwards); with ``gradients``, the gradients of the last
    step instead (before the optimiser uses them: AdamW turns a rounding difference in a near-zero gradient into
    a step of the learning rate's size)."""
    from flmm_probe.data.shapes import IMAGE_SIZE
    from flmm_probe.organism.build import VARIANTS, build_lmm, build_processor
    from flmm_probe.organism.train import BATCH, lmm_batch, text_recipe
    from flmm_probe.organism.vision import optimizer_step

    processor = build_processor(VARIANTS[variant].patch)
    torch.manual_seed(0)
    model = build_lmm(VARIANTS[variant], processor.tokenizer)
    model.model.vision_tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step in range(steps):
            inputs = lmm_batch(step, BATCH, 1, processor, (IMAGE_SIZE // VARIANTS[variant].patch) ** 2, text_recipe(variant))
            optimizer_step(model(**inputs).loss, opt, params)
    finally:
        torch.set_num_threads(before)
    return [(p.grad if gradients else p).detach().clone() for p in params]
