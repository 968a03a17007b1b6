"""The embedded default: a tiny LLaVA and a tiny SAM trained from scratch on the shapes world.

    from flmm_probe.organism import load_organism, load_organism_sam
    model, processor = load_organism("small")      # LlavaForConditionalGeneration, LlavaProcessor
    sam = load_organism_sam()                      # segment_anything.Sam

The shipped folders under ``WEIGHTS_DIR`` are plain ``save_pretrained`` folders, so
``AutoModelForImageTextToText.from_pretrained(WEIGHTS_DIR / "small")`` works too. Intermediate
checkpoints of the "small" variant ship under ``WEIGHTS_DIR / "checkpoints" / "small"``.
``flmm-probe organism train`` (``flmm_probe.organism.train.main``) re-trains everything from a seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from segment_anything.modeling import Sam
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

from flmm_probe.organism.build import VARIANTS
from flmm_probe.organism.sam import load_saved_sam

WEIGHTS_DIR = Path(__file__).parent / "weights"


class OrganismNotFoundError(FileNotFoundError):
    """A requested organism variant or checkpoint is not shipped."""


def organism_path(variant: str = "small", step: int | None = None) -> Path:
    """Folder of a shipped variant (``step=None``: the final model) or of one shipped checkpoint."""
    if variant not in VARIANTS:
        raise OrganismNotFoundError(f"unknown organism variant {variant!r}; choose one of {sorted(VARIANTS)}")
    if step is None:
        return WEIGHTS_DIR / variant
    path = WEIGHTS_DIR / "checkpoints" / variant / f"step_{step:05d}"
    if not path.is_dir():
        raise OrganismNotFoundError(
            f"no shipped checkpoint {variant!r} step {step} (shipped: {shipped_steps(variant)}); "
            "re-create all checkpoints with `flmm-probe organism train`."
        )
    return path


def shipped_steps(variant: str = "small") -> list[int]:
    """Training steps of the shipped intermediate checkpoints of ``variant``."""
    folder = WEIGHTS_DIR / "checkpoints" / variant
    return sorted(int(p.name.split("_")[1]) for p in folder.glob("step_*")) if folder.is_dir() else []


def load_organism(variant: str = "small", step: int | None = None,
                  dtype: torch.dtype = torch.float32, **kwargs) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """(model in eval mode, processor) of a shipped variant; ``kwargs`` go to ``from_pretrained``."""
    path = organism_path(variant, step)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **kwargs)
    return model.eval(), AutoProcessor.from_pretrained(path)


def load_organism_sam() -> Sam:
    """The shipped organism SAM (float32, eval mode); it segments IMAGE_SIZE x IMAGE_SIZE scenes."""
    return load_saved_sam(WEIGHTS_DIR / "sam")


__all__ = ["WEIGHTS_DIR", "OrganismNotFoundError", "load_organism", "load_organism_sam", "organism_path", "shipped_steps"]
