"""AttentionRecord: what the probe saw for one image and one text, per phrase."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .phrases import Span


@dataclass
class AttentionRecord:
    """Word-to-patch attention of one sample, merged per phrase.

    text: the text fed as the assistant's answer; phrases: the phrase strings; spans: their char spans.
    maps: {view kind: (phrase, layer, head, y, x) float32}, image-space canvases (see Layout.to_image),
        "global" always, "tiles" for any-resolution backbones.
    hidden: per phrase, (token, layer, dim) hidden states of its tokens after each decoder layer, or
        empty when hidden states were not asked for.
    image_mass: (phrase, layer, head) attention mass the phrase puts on all image tokens (merged like
        the maps), before any painting into image space.
    key_norms: {view kind: (layer, kv_head, y, x)} L2 norms of the image tokens' keys, painted like the
        maps; high-norm keys are the attention sinks.
    image_size: (height, width) of the original image, pixels.
    meta: model id, model_type, pooling and other provenance, JSON-serialisable.
    """

    text: str
    phrases: list[str]
    spans: list[Span]
    maps: dict[str, torch.Tensor]
    image_size: tuple[int, int]
    hidden: list[torch.Tensor] = field(default_factory=list)
    image_mass: torch.Tensor | None = None
    key_norms: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.maps["global"].shape[1]

    @property
    def num_heads(self) -> int:
        return self.maps["global"].shape[2]

    def fused(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(phrase, layer, head, y, x): all view kinds resized to `size` (default: the finest) and averaged."""
        size = size or max((m.shape[-2:] for m in self.maps.values()), key=lambda s: s[0] * s[1])
        return torch.stack([_resize(m, size) for m in self.maps.values()]).mean(0)

    def stacked(self, size: tuple[int, int] | None = None, kinds: Sequence[str] | None = None) -> torch.Tensor:
        """(phrase, kind*layer*head, y, x): the maps of each view kind as channels, the decoder's input.

        kinds: the kinds, in channel order (default: the record's own). A kind the record lacks (a one-tile
        image has no "tiles") gets zero channels, so that records of one backbone stack to the same channels
        whatever their images; a kind the record has but ``kinds`` leaves out is an error.
        """
        kinds = list(self.maps) if kinds is None else list(kinds)
        extra = set(self.maps) - set(kinds)
        if extra:
            raise ValueError(f"The record has view kinds {sorted(extra)} that the channel layout {kinds} leaves out.")
        size = size or max((m.shape[-2:] for m in self.maps.values()), key=lambda s: s[0] * s[1])
        some = next(iter(self.maps.values()))  # (phrase, layer, head, y, x): every kind has the same heads
        absent = some.new_zeros(some.shape[0], some.shape[1] * some.shape[2], *size)
        return torch.cat([_resize(self.maps[k], size).flatten(1, 2) if k in self.maps else absent for k in kinds], dim=1)

    def _repr_html_(self) -> str:
        """In Jupyter, the interactive viewer of this record's maps (``flmm_probe.viewer``; no image: it is not stored)."""
        from .viewer import View

        return View(self)._repr_html_()

    def save(self, path: str | Path) -> None:
        """Write the record to one safetensors file (tensors + JSON metadata in its header)."""
        tensors = {f"maps.{kind}": m.contiguous() for kind, m in self.maps.items()}
        tensors.update({f"hidden.{i}": h.contiguous() for i, h in enumerate(self.hidden)})
        tensors.update({f"key_norms.{kind}": k.contiguous() for kind, k in self.key_norms.items()})
        if self.image_mass is not None:
            tensors["image_mass"] = self.image_mass.contiguous()
        header = {
            "text": self.text,
            "phrases": self.phrases,
            "spans": self.spans,
            "image_size": list(self.image_size),
            "kinds": list(self.maps),
            "meta": self.meta,
        }
        save_file(tensors, str(path), metadata={"flmm_probe.record": json.dumps(header)})

    @classmethod
    def load(cls, path: str | Path) -> AttentionRecord:
        """Read a record written by `save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("flmm_probe.record")
        if raw is None:
            raise ValueError(f"{path} is not an AttentionRecord file (no flmm_probe.record metadata).")
        header = json.loads(raw)
        tensors = load_file(str(path))
        hidden = [tensors[f"hidden.{i}"] for i in range(len(header["phrases"])) if f"hidden.{i}" in tensors]
        return cls(
            text=header["text"],
            phrases=header["phrases"],
            spans=[tuple(s) for s in header["spans"]],
            maps={kind: tensors[f"maps.{kind}"] for kind in header["kinds"]},
            image_size=tuple(header["image_size"]),
            hidden=hidden,
            image_mass=tensors.get("image_mass"),
            key_norms={k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("key_norms.")},
            meta=header["meta"],
        )


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., y, x) -> (..., *size), bilinear; a no-op at the same size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(1, -1, *maps.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)
