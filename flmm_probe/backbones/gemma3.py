"""Gemma 3 (`gemma3`): `<start_of_image>`, a square grid of pooled soft tokens, `<end_of_image>`.

The image processor resizes the image to a fixed square (aspect not kept, no crop, no pad); SigLIP cuts it
into patches, and the projector average-pools the patch grid to `mm_tokens_per_image` soft tokens, kept
in row-major order. The processor gives `token_type_ids` (1 on soft tokens), from which the model lets
the tokens of one image attend to each other both ways.
"""

from __future__ import annotations

import math

from transformers import BatchFeature

from ..layout import Layout, View
from .base import Backbone, image_positions, register_backbone


@register_backbone("gemma3")
class Gemma3Backbone(Backbone):
    """Gemma 3 with one view per image; Pan & Scan crops are not supported."""

    def layout(self, inputs: BatchFeature, index: int, image_size: tuple[int, int]) -> Layout:
        tokens = self.model.config.mm_tokens_per_image
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"mm_tokens_per_image={tokens} is not a square grid.")
        positions = image_positions(inputs["input_ids"][index], self.image_token_id)
        if positions.numel() != tokens:
            # Pan & Scan (a processor call with do_pan_and_scan=True) adds one block per crop.
            raise ValueError(
                f"Expected {tokens} soft tokens for one image, found {positions.numel()}: "
                "Gemma3Backbone supports one view per image, not Pan & Scan crops."
            )
        height, width = image_size
        # The image processor stretches the whole image to its square input (no crop, no pad).
        return Layout((View(positions, (side, side), (0.0, 0.0, float(width), float(height))),), image_size)
