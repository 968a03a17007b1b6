"""DeepSeek-VL (`deepseek_vl`): one block of `num_image_tokens` tokens, the SigLIP patch grid of one view.

The image processor resizes the longest side to `size` (the other side rounded, at least `min_size`)
and pads the short side to a square, centred (`pad_to_square`: the top/left padding is the floor half).
The square's patch grid, row-major, is the view; its box extends past the image on the padded side.
"""

from __future__ import annotations

import math

from transformers import BatchFeature

from ..layout import GLOBAL, Layout, View
from .base import Backbone, image_positions, register_backbone


@register_backbone("deepseek_vl")
class DeepseekVLBackbone(Backbone):
    """DeepSeek-VL: a single "global" view over the padded square."""

    def layout(self, inputs: BatchFeature, index: int, image_size: tuple[int, int]) -> Layout:
        n_tokens = self.processor.num_image_tokens
        side = math.isqrt(n_tokens)
        vision = self.model.config.vision_config
        if side * side != n_tokens or side != vision.image_size // vision.patch_size:
            raise ValueError(f"num_image_tokens={n_tokens} is not the {vision.image_size // vision.patch_size}^2 patch grid.")
        positions = image_positions(inputs["input_ids"][index], self.image_token_id)
        box = padded_square_box(self.processor.image_processor, image_size)
        return Layout((View(positions, (side, side), box, GLOBAL),), image_size)


def padded_square_box(image_processor: object, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Region of the original image (pixels, XYXY) that DeepseekVLImageProcessor's square input shows.

    Mirrors its `resize` (longest side to size, rounded, floored at min_size) and `pad_to_square`.
    """
    if not image_processor.do_pad or not image_processor.do_resize:
        raise ValueError("DeepSeek-VL layouts assume the processor's resize and pad_to_square (do_resize=do_pad=True).")
    height, width = image_size
    side = image_processor.size.height
    scale = side / max(height, width)
    new_h = max(round(height * scale), image_processor.min_size)
    new_w = max(round(width * scale), image_processor.min_size)
    # pad_to_square pads only the short side; a square image is left as it is.
    top = (side - new_h) // 2 if width > height else 0
    left = (side - new_w) // 2 if height > width else 0
    scale_y, scale_x = new_h / height, new_w / width  # square pixels per original pixel, per axis
    return (-left / scale_x, -top / scale_y, (side - left) / scale_x, (side - top) / scale_y)
