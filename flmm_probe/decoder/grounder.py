"""The grounder: attention maps (+ SAM image embedding and phrase hidden states) -> mask logits, and its files.

F-LMM's heads as one module (docs/design.md steps 4-5): the U-Net mask decoder (`decoder.unet`) reads a
phrase's attention maps as channels; the SAM refiner (`decoder.refiner`) prompts SAM with the coarse mask's
box and logits and the phrase's hidden states. `GrounderConfig` is the architecture (`fit.FitConfig` adds the
training recipe); `load_grounder` rebuilds a fitted grounder from the run folder `fit` wrote:

    grounder.json           the config, and the shapes needed to rebuild the grounder
    grounder.safetensors    the trainable weights (no SAM image encoder), after the last epoch
    epoch_NNN.safetensors   the same after each epoch

Each weights file carries the sha256 of its tensors in its metadata, checked when it is read.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from segment_anything.modeling import Sam
from torch import nn

from ..record import AttentionRecord
from .refiner import SamRefiner
from .unet import MaskDecoder, UNetConfig, resize_logits

FORMAT_VERSION = 1
MAP_KINDS = ("stacked", "fused")
CONFIG_FILE, WEIGHTS_FILE = "grounder.json", "grounder.safetensors"
CHECKSUM_KEY = "flmm_probe.sha256"  # safetensors metadata: the sha256 of the file's tensors (tensor_digest)
FROZEN_PREFIX = "refiner.sam.image_encoder."  # never saved: it is the user's SAM, unchanged


@dataclass
class GrounderConfig:
    """A grounder's architecture: what `build_grounder` builds and `load_grounder` rebuilds (fit.FitConfig adds
    the training recipe). Defaults are the paper's (docs/design.md steps 4-5).

    maps: "stacked" (every view kind's (layer, head) maps as channels, AttentionRecord.stacked) or
        "fused" (kinds averaged first, AttentionRecord.fused: layer * head channels).
    pooling: how the store merged a phrase's tokens ("mean" | "max" | "last"); checked against the store, and used
        by `segment` to record new images the same way.
    use_refiner: the SAM refiner (else only the U-Net; refined masks are then None).
    use_text, use_box, use_mask: the refiner's prompts (docs/design.md step 5).
    base_channels, stages, convs_per_stage, long_side, log_maps: the U-Net (decoder.unet.UNetConfig).
    """

    maps: str = "stacked"
    pooling: str = "mean"
    use_refiner: bool = True
    use_text: bool = True
    use_box: bool = True
    use_mask: bool = True
    base_channels: int = 64
    stages: int = 4
    convs_per_stage: int = 2
    long_side: int = 64
    log_maps: bool = False

    def __post_init__(self) -> None:
        if self.maps not in MAP_KINDS:
            raise ValueError(f"Unknown maps {self.maps!r}; choose one of {MAP_KINDS}.")

    def unet(self, in_channels: int) -> UNetConfig:
        return UNetConfig(in_channels, self.base_channels, self.stages, self.convs_per_stage, self.long_side,
                          self.log_maps)

    @classmethod
    def of(cls, config: dict[str, Any]) -> GrounderConfig:
        """The architecture fields of a saved config (grounder.json's "config", a FitConfig as a dict)."""
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})


@dataclass
class GroundingInput:
    """One image and n of its phrases, what `Grounder.forward` takes.

    maps: (n, C, y, x) attention maps as channels over the whole original image (Grounder.channels).
    image_size: (H, W) of the original image, pixels.
    hidden: n tensors (tokens, layers, dim), the phrases' hidden states; None without text prompts.
    embedding: (C', h', w') frozen SAM image embedding (SamRefiner.embed); None without the refiner.
    input_size: (h, w) SAM input frame of the image, as SamRefiner.embed returns it.
    """

    maps: torch.Tensor
    image_size: tuple[int, int]
    hidden: list[torch.Tensor] | None = None
    embedding: torch.Tensor | None = None
    input_size: tuple[int, int] | None = None


class Grounder(nn.Module):
    """Attention maps (+ SAM image embedding and phrase hidden states) -> mask logits.

    decoder: the U-Net (trained). refiner: a SamRefiner (prompt encoder, mask decoder and text
    projection trained, image encoder frozen), or None for coarse masks only.
    maps, pooling: as in GrounderConfig; they say how records become decoder inputs.
    """

    def __init__(self, decoder: MaskDecoder, refiner: SamRefiner | None, maps: str = "stacked", pooling: str = "mean",
                 kinds: Sequence[str] | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        self.refiner = refiner
        self.maps, self.pooling, self.kinds = maps, pooling, kinds

    @property
    def device(self) -> torch.device:
        return self.decoder.head.weight.device

    def channels(self, record: AttentionRecord) -> torch.Tensor:
        """(phrase, C, y, x) float32 decoder input of a record (see `record_channels`)."""
        return record_channels(record, self.maps, self.kinds)

    def coarse(self, maps: torch.Tensor) -> torch.Tensor:
        """(n, C, y, x) maps -> (n, Y', X') coarse logits at the decoder's map grid (covering the whole image)."""
        return self.decoder(maps.to(self.device))

    def forward(self, images: list[GroundingInput]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per image: (coarse (n, H, W), refined (n, H, W) or None) logits at the original image size.

        All images go through one call so that DistributedDataParallel sees one forward per step.
        """
        out = []
        for item in images:
            grid = self.coarse(item.maps)  # (n, Y', X')
            coarse = resize_logits(grid, item.image_size)  # (n, H, W)
            refined = None
            if self.refiner is not None:
                if item.embedding is None or item.input_size is None:
                    raise ValueError("This Grounder has a SAM refiner: pass the image's embedding and input_size.")
                refined = self.refiner.forward_embedding(
                    item.embedding, item.input_size, item.image_size, grid, item.hidden if self.refiner.use_text else None
                )
            out.append((coarse, refined))
        return out

    def ground(
        self,
        record: AttentionRecord,
        embedding: torch.Tensor | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A record (all its phrases) + its image's SAM embedding (C', h', w') -> (coarse, refined) logits,
        each (phrase, H, W) at the original image size; refined is None without a refiner."""
        hidden = record.hidden if self.refiner is not None and self.refiner.use_text else None
        if hidden is not None and not hidden:
            raise ValueError("The refiner uses text prompts but the record has no hidden states; record with hidden_states=True.")
        return self([GroundingInput(self.channels(record), tuple(record.image_size), hidden, embedding, input_size)])[0]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint holds: everything but SAM's frozen image encoder."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith(FROZEN_PREFIX)}


def record_channels(record: AttentionRecord, maps: str = "stacked", kinds: Sequence[str] | None = None) -> torch.Tensor:
    """(phrase, C, y, x) float32: a record's maps as decoder channels, "stacked" (kind * layer * head, for each of
    ``kinds`` in that order, zeros for a kind the record lacks; default the record's own) or "fused" (layer *
    head, kinds averaged), at the finest kind's grid."""
    if maps == "stacked":
        return record.stacked(kinds=kinds)
    if maps == "fused":
        return record.fused().flatten(1, 2)
    raise ValueError(f"Unknown maps {maps!r}; choose one of {MAP_KINDS}.")


def own_sam(sam: Sam) -> Sam:
    """A Sam that shares `sam`'s frozen image encoder but trains its own copies of the prompt encoder and
    mask decoder, so that fitting never changes the caller's SAM and two fits start from the same weights."""
    own = Sam(
        image_encoder=sam.image_encoder,
        prompt_encoder=copy.deepcopy(sam.prompt_encoder),
        mask_decoder=copy.deepcopy(sam.mask_decoder),
        pixel_mean=sam.pixel_mean.flatten().tolist(),
        pixel_std=sam.pixel_std.flatten().tolist(),
    )
    own.image_format = sam.image_format
    return own


def build_grounder(config: GrounderConfig, in_channels: int, sam: Sam | None, text_dim: int | None = None,
                   text_layers: int | None = None, kinds: Sequence[str] | None = None, seed: int = 0) -> Grounder:
    """A freshly initialised Grounder (torch seeded with `seed`) for maps with `in_channels` channels.

    text_dim, text_layers: the LMM's hidden size and hidden-state layers per token (needed with use_text).
    kinds: the stacked maps' view kinds in channel order (``record_channels``).
    """
    torch.manual_seed(seed)
    decoder = MaskDecoder(config.unet(in_channels))
    refiner = None
    if config.use_refiner:
        if sam is None:
            raise ValueError("config.use_refiner is set: pass the SAM whose prompt encoder and mask decoder to train.")
        refiner = SamRefiner(own_sam(sam), config.use_text, config.use_box, config.use_mask, text_dim, text_layers)
    return Grounder(decoder, refiner, config.maps, config.pooling, kinds)


def sam_shapes(sam: Sam) -> dict[str, Any]:
    return {"img_size": sam.image_encoder.img_size, "embed_dim": sam.prompt_encoder.embed_dim,
            "mask_input_size": list(sam.prompt_encoder.mask_input_size)}


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_spec(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged ({err}): the run cannot be rebuilt or resumed without it; refit into a new "
                         "folder.") from err


def load_trainable(grounder: Grounder, weights: Path) -> None:
    """Load a checkpoint's weights (all but SAM's frozen image encoder) into `grounder`."""
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the fit did not finish an epoch; rerun it with --resume.")
    way_out = "Load one of the epoch checkpoints next to it (epoch_NNN.safetensors), or refit."
    try:
        state = load_file(str(weights))
        with safe_open(str(weights), "pt") as f:
            expected = (f.metadata() or {}).get(CHECKSUM_KEY)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} cannot be read ({err}): the file is damaged. {way_out}") from err
    if expected is not None and tensor_digest(state) != expected:
        raise ValueError(f"{weights} is damaged: its tensors' sha256 is not the one saved with them. {way_out}")
    missing, unexpected = grounder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(FROZEN_PREFIX)]
    if missing or unexpected:
        raise ValueError(f"{weights} does not match its {CONFIG_FILE}: missing {missing[:5]}, unexpected {unexpected[:5]}.")


def load_grounder(path: str | Path, sam: Sam | None = None, device: str | torch.device = "cpu") -> Grounder:
    """Rebuild a fitted Grounder in eval mode from a run folder (its last weights) or one checkpoint file
    (epoch_NNN.safetensors, next to its grounder.json).

    sam: the SAM the run was fitted with (its frozen image encoder is used as is; the checkpoint holds
    the trained prompt encoder and mask decoder). Needed when the run used the refiner.
    """
    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    spec_path = weights.parent / CONFIG_FILE
    if not spec_path.exists():
        raise FileNotFoundError(f"No {CONFIG_FILE} next to {weights}; pass a run folder written by fit().")
    spec = read_spec(spec_path)
    if spec.get("format") != FORMAT_VERSION:
        raise ValueError(f"{spec_path} has format {spec.get('format')}; this code reads {FORMAT_VERSION}.")
    config = GrounderConfig.of(spec["config"])
    if config.use_refiner:
        if sam is None:
            raise ValueError(f"The run at {weights.parent} used the SAM refiner: pass the SAM it was fitted with.")
        if sam_shapes(sam) != spec["sam"]:
            raise ValueError(f"This SAM has shapes {sam_shapes(sam)}, the run was fitted with {spec['sam']}.")
    # Runs fitted before the channel layout was saved stack each record's own kinds.
    grounder = build_grounder(config, spec["in_channels"], sam, spec["text_dim"], spec["text_layers"], spec.get("kinds"))
    load_trainable(grounder, weights)
    return grounder.to(device).eval()


__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "MAP_KINDS", "WEIGHTS_FILE", "Grounder", "GrounderConfig", "GroundingInput",
           "build_grounder", "load_grounder", "read_spec", "record_channels", "tensor_digest"]
