"""Backbone adapters, one module per HF family, registered by `config.model_type`."""

from __future__ import annotations

import os
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

class ModelNotFoundError(OSError):
    """A model id or folder that can be loaded neither from disk, nor from the local cache, nor from the hub."""


def _check_reachable(model_id: str | Path) -> None:
    """Raise ModelNotFoundError within seconds, saying what was tried and how to fix it, unless ``model_id`` is a
    folder, is in the local Hugging Face cache, or the hub answers for it."""
    from huggingface_hub import model_info, try_to_load_from_cache

    if Path(model_id).is_dir():
        if not (Path(model_id) / "config.json").is_file():
            raise ModelNotFoundError(f"{model_id} is a folder without config.json: pass a save_pretrained folder.")
        return
    name = str(model_id)
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    why = "HF_HUB_OFFLINE is set"
    if os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false", "False"):
        try:
            model_info(name, timeout=5)
            return
        except Exception as err:  # the hub's and the network's errors alike: all of them mean "not from the hub"
            why = f"the hub did not answer for it ({type(err).__name__}: {err})"
    raise ModelNotFoundError(
        f"Cannot load {name!r}: it is not a local folder, not in the Hugging Face cache, and {why}. To fix: download it "
        f"where there is network (`huggingface-cli download {name}`) and copy the cache or the folder here, then pass the "
        "folder or set HF_HUB_OFFLINE=1; or use the embedded default, --backbone organism. Supported model families "
        f"(config.model_type, `flmm-probe backbones`): {', '.join(list_backbones())}."
    )


__all__ = [
    "DEFAULT_INSTRUCTION",
    "Backbone",
    "ModelNotFoundError",
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
        _check_reachable(model_or_id)
        model = AutoModelForImageTextToText.from_pretrained(model_or_id, **from_pretrained_kwargs)
        model.requires_grad_(False)
        processor = processor or AutoProcessor.from_pretrained(model_or_id)
    else:
        model = model_or_id
        if processor is None:
            raise ValueError("Pass the model's processor along with a model object: load_backbone(model, processor).")
    return adapter_for(model.config.model_type)(model, processor, instruction=instruction)
