"""Backbone adapters, one module per HF family, registered by `config.model_type`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

# Importing an adapter module registers it.
from . import deepseek_vl, gemma3, idefics3, internvl, llava, llava_next, paligemma, qwen_vl  # noqa: F401
from .base import (
    DEFAULT_INSTRUCTION,
    Backbone,
    UnsupportedModelError,
    adapter_for,
    list_backbones,
    register_backbone,
)

__all__ = [
    "DEFAULT_INSTRUCTION",
    "Backbone",
    "UnsupportedModelError",
    "adapter_for",
    "list_backbones",
    "load_backbone",
    "register_backbone",
]


def load_backbone(
    model_or_id: PreTrainedModel | str | Path,
    processor: ProcessorMixin | None = None,
    instruction: str = DEFAULT_INSTRUCTION,
    **from_pretrained_kwargs: Any,
) -> Backbone:
    """A Backbone for a model object, a hub id, a local path, or "organism[:VARIANT]" (the embedded default).

    With an id or a path, the model is loaded with `AutoModelForImageTextToText.from_pretrained(id,
    **from_pretrained_kwargs)` (e.g. dtype=torch.bfloat16, device_map="auto") and the processor with
    `AutoProcessor.from_pretrained(id)`. SDPA is used where the model supports it, eager otherwise.
    """
    if isinstance(model_or_id, str) and model_or_id.split(":")[0] == "organism":
        from ..organism import load_organism

        model_or_id, processor = load_organism(model_or_id.partition(":")[2] or "small", **from_pretrained_kwargs)
    if isinstance(model_or_id, (str, Path)):
        model = AutoModelForImageTextToText.from_pretrained(model_or_id, **from_pretrained_kwargs)
        model.requires_grad_(False)
        processor = processor or AutoProcessor.from_pretrained(model_or_id)
    else:
        model = model_or_id
        if processor is None:
            raise ValueError("Pass the model's processor along with a model object: load_backbone(model, processor).")
    return adapter_for(model.config.model_type)(model, processor, instruction=instruction)
