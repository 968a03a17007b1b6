"""LLaVA-NeXT (`llava_next`) and LLaVA-OneVision (`llava_onevision`): any-resolution image tokens.

One image becomes one block of image tokens: the base view (the whole image squashed to one tile,
h x w tokens), then the high-resolution tiles stitched into one grid, unpadded, with a newline token
closing every row. As in the F-LMM paper, the newline column is not an image region: the stitched grid
without it is the "tiles" view, the base view the "global" view.

Geometry (image processor `_get_image_patches`): the image is resized, keeping its aspect ratio, to fit
the best grid pinpoint (Hb, Wb), pasted at the centre of an (Hb, Wb) canvas and cut into tiles; the
model stitches the tiles' tokens and `unpad_image` drops the token rows (or columns) that only cover
canvas padding. OneVision may then resample the unpadded grid to fewer tokens (`vision_aspect_ratio`),
which changes the grid but not the region it covers.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import BatchFeature
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
from transformers.image_utils import ChannelDimension
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from ..layout import GLOBAL, TILES, Layout, View
from .base import Backbone, image_positions, register_backbone

Box = tuple[float, float, float, float]


@register_backbone("llava_next", "llava_onevision")
class LlavaNextBackbone(Backbone):
    """Any-resolution LLaVA: a "global" base view and a "tiles" view of the stitched, unpadded tiles."""

    view_kinds = (GLOBAL, TILES)

    def layout(self, inputs: BatchFeature, index: int, image_size: tuple[int, int]) -> Layout:
        config = self.model.config
        tile_px = config.vision_config.image_size  # side of one tile, in processed pixels
        side = tile_px // config.vision_config.patch_size  # tokens per tile side (CLS dropped by the model)
        _check_square_resize(self.processor.image_processor, tile_px)
        processed = [int(s) for s in inputs["image_sizes"][index]]  # (height, width) the processor saw
        if processed != list(image_size):
            raise ValueError(f"image_sizes says {processed}, but the image is {image_size}.")
        positions = image_positions(inputs["input_ids"][index], self.image_token_id)

        # The stitched grid before unpadding: (tiles_h * side) x (tiles_w * side) tokens.
        tiles_h, tiles_w = get_anyres_image_grid_shape(image_size, config.image_grid_pinpoints, tile_px)
        # Rows and columns after unpadding (and OneVision's resampling): the processor's own count, whose
        # newline count is the number of rows. The model checks that its features match this count.
        unpadded, rows = self.processor._get_unpadded_features(*image_size, side, side, tiles_h, tiles_w)
        cols = unpadded // rows
        base = side * side
        if positions.numel() != base + rows * (cols + 1):
            raise ValueError(f"Expected {base} + {rows}x({cols}+1) image tokens, found {positions.numel()}.")
        grid = torch.arange(rows * (cols + 1)).reshape(rows, cols + 1)[:, :cols]  # drop the newline column
        views = (
            View(positions[:base], (side, side), (0.0, 0.0, float(image_size[1]), float(image_size[0])), GLOBAL),
            View(positions[base + grid.flatten()], (rows, cols), self._tiles_box(image_size, tiles_h, tiles_w, side), TILES),
        )
        return Layout(views, image_size)

    def _tiles_box(self, image_size: tuple[int, int], tiles_h: int, tiles_w: int, side: int) -> Box:
        """Region of the original image (pixels, XYXY) under the unpadded stitched grid."""
        height, width = image_size
        best_h, best_w = select_best_resolution(image_size, self.config_pinpoints)
        # The resized image and where the processor pastes it on the (best_h, best_w) canvas
        # (`_get_padding_size`: the left/top padding is the floor half).
        shape_only = np.broadcast_to(np.uint8(0), (1, height, width))
        new_h, new_w = get_patch_output_size(shape_only, (best_h, best_w), ChannelDimension.FIRST)
        paste_y, paste_x = (best_h - new_h) // 2, (best_w - new_w) // 2
        # Which token rows and columns of the stitched grid survive `unpad_image`: unpad their indices.
        rows_h, cols_w = tiles_h * side, tiles_w * side
        index = torch.arange(rows_h * cols_w).reshape(1, rows_h, cols_w)
        kept = unpad_image(index, image_size)[0]
        r0, c0 = divmod(int(kept[0, 0]), cols_w)
        r1, c1 = r0 + kept.shape[0], c0 + kept.shape[1]
        cell_y, cell_x = best_h / rows_h, best_w / cols_w  # canvas pixels per token
        scale_y, scale_x = new_h / height, new_w / width  # canvas pixels per original pixel
        return (
            (c0 * cell_x - paste_x) / scale_x,
            (r0 * cell_y - paste_y) / scale_y,
            (c1 * cell_x - paste_x) / scale_x,
            (r1 * cell_y - paste_y) / scale_y,
        )

    @property
    def config_pinpoints(self) -> list[list[int]]:
        """The (height, width) resolutions the image processor tiles to; they must match the model's."""
        pinpoints = self.processor.image_processor.image_grid_pinpoints
        if [list(p) for p in pinpoints] != [list(p) for p in self.model.config.image_grid_pinpoints]:
            raise ValueError("The processor's image_grid_pinpoints differ from the model config's.")
        return pinpoints


def _check_square_resize(image_processor: object, tile_px: int) -> None:
    """The base view and every tile must reach the model whole: resized to `tile_px` squares, not cropped.

    Both processors resize the base view to a square of `size` and each tile again to `size`, then may
    centre-crop to `crop_size`; a crop smaller than the resize would cut the view, which the boxes here
    do not model.
    """
    size = image_processor.size
    sides = {size.shortest_edge} if size.shortest_edge else {size.height, size.width}
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop is not None and crop.height:
        sides |= {crop.height, crop.width}
    if sides != {tile_px}:
        raise ValueError(f"Expected square {tile_px}px resizes without cropping, got size={size}, crop_size={crop}.")
