"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: one block of merged patch tokens for the whole (resized) image.

The image processor resizes each image, without crop or pad, to sides that are multiples of
patch * merge (`smart_resize`), cuts it into patches and reports the patch grid in `image_grid_thw`
(t, h, w). The vision merger fuses merge x merge neighbouring patches into one token, in row-major order
of the merged grid, so the image's tokens form an (h / merge) x (w / merge) grid over the whole image.
The processor also gives `mm_token_type_ids` (1 on image tokens), which the model needs for its 3D
(temporal, height, width) rotary positions.
"""

from __future__ import annotations

from transformers import BatchFeature

from ..layout import Layout, View
from .base import Backbone, image_positions, register_backbone


@register_backbone("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
class QwenVLBackbone(Backbone):
    """Qwen-VL families: grid from `image_grid_thw` and the spatial merge size; the box is the whole image."""

    def layout(self, inputs: BatchFeature, index: int, image_size: tuple[int, int]) -> Layout:
        merge = self.model.config.vision_config.spatial_merge_size
        # One image per sample, so image `index` belongs to sample `index`.
        frames, patch_rows, patch_cols = (int(n) for n in inputs["image_grid_thw"][index])
        if frames != 1:
            grid = (frames, patch_rows, patch_cols)
            raise ValueError(f"Expected a single-frame image grid, got image_grid_thw {grid}.")
        positions = image_positions(inputs["input_ids"][index], self.image_token_id)
        height, width = image_size
        # smart_resize stretches the whole image to the patch grid (no crop, no pad).
        box = (0.0, 0.0, float(width), float(height))
        return Layout((View(positions, (patch_rows // merge, patch_cols // merge), box),), image_size)

