"""LLaVA-1.5 (`llava`): one block of (H/p) x (W/p) image tokens for one square view."""

from __future__ import annotations

from transformers import BatchFeature

from ..layout import Layout, View, square_box
from .base import Backbone, image_positions, register_backbone


def view_box(image_processor: object, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Region of the original image that a CLIP-style image processor turns into its square input.

    Pad to square (LlavaImageProcessor with do_pad) -> a box larger than the image; resize the short
    side then centre-crop -> the central crop; resize to a fixed (height, width) -> the whole image.
    """
    height, width = image_size
    if getattr(image_processor, "do_pad", False):
        return square_box(image_size, pad=True)
    size, crop = image_processor.size, getattr(image_processor, "crop_size", None)
    if size.shortest_edge and getattr(image_processor, "do_center_crop", False) and crop is not None:
        scale = size.shortest_edge / min(height, width)
        crop_w, crop_h = crop.width / scale, crop.height / scale
        x0, y0 = (width - crop_w) / 2, (height - crop_h) / 2
        return (x0, y0, x0 + crop_w, y0 + crop_h)
    return (0.0, 0.0, float(width), float(height))


@register_backbone("llava")
class LlavaBackbone(Backbone):
    """LLaVA-1.5: the CLIP patch grid, CLS dropped by vision_feature_select_strategy="default"."""

    def layout(self, inputs: BatchFeature, index: int, image_size: tuple[int, int]) -> Layout:
        config = self.model.config
        patch = config.vision_config.patch_size
        rows, cols = (s // patch for s in inputs["pixel_values"].shape[-2:])
        positions = image_positions(inputs["input_ids"][index], self.image_token_id)
        if config.vision_feature_select_strategy == "full":
            positions = positions[1:]  # the CLS feature comes first and is not a patch
        box = view_box(self.processor.image_processor, image_size)
        return Layout((View(positions, (rows, cols), box),), image_size)
