"""InternVL (`internvl`, InternVL3 in transformers): dynamic crops plus a thumbnail.

The image processor (GotOcr2ImageProcessor with `crop_to_patches`) picks a (rows x cols) tile grid whose
aspect ratio is closest to the image's (`get_optimal_tiled_canvas`), resizes the whole image, WITHOUT
keeping its aspect ratio, to exactly (rows * tile, cols * tile) pixels and cuts it row-major into crops;
when there is more than one crop it appends a thumbnail: the whole image resized to one tile. Each tile
becomes `image_seq_length` tokens (patches pixel-shuffled to side x side, row-major), all of them the
<IMG_CONTEXT> token, back to back between <img> and </img>.
"""

from __future__ import annotations

import math

from transformers import BatchFeature
from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

from ..layout import GLOBAL, TILES, Layout, View
from .base import Backbone, image_positions, register_backbone


@register_backbone("internvl")
class InternVLBackbone(Backbone):
    """InternVL: one "tiles" view per crop (its own box), the thumbnail as the "global" view."""

    view_kinds = (GLOBAL, TILES)

    def layout(self, inputs: BatchFeature, index: int, image_size: tuple[int, int]) -> Layout:
        height, width = image_size
        per_tile = self.processor.image_seq_length
        side = math.isqrt(per_tile)
        if side * side != per_tile:
            raise ValueError(f"image_seq_length {per_tile} is not a square grid of tokens.")
        positions = image_positions(inputs["input_ids"][index], self.image_token_id)
        n_tiles, rest = divmod(positions.numel(), per_tile)
        if rest:
            raise ValueError(f"{positions.numel()} image tokens are not whole tiles of {per_tile}.")
        blocks = positions.reshape(n_tiles, per_tile)
        whole = (0.0, 0.0, float(width), float(height))
        if n_tiles == 1:  # a single tile is the whole image resized (no crops, no thumbnail)
            return Layout((View(blocks[0], (side, side), whole, GLOBAL),), image_size)

        image_processor = self.processor.image_processor
        tile = image_processor.size
        cols, rows = get_optimal_tiled_canvas(
            (height, width), (tile.height, tile.width), image_processor.min_patches, image_processor.max_patches
        )
        if rows * cols + 1 != n_tiles:
            raise ValueError(f"Expected {rows}x{cols} crops and a thumbnail, found {n_tiles} tiles of tokens.")
        # Crop (r, c) is cell (r, c) of the image stretched to the grid: W/cols x H/rows original pixels.
        crop_w, crop_h = width / cols, height / rows
        views = [
            View(blocks[i], (side, side), (c * crop_w, r * crop_h, (c + 1) * crop_w, (r + 1) * crop_h), TILES)
            for i, (r, c) in enumerate((i // cols, i % cols) for i in range(rows * cols))
        ]
        views.append(View(blocks[-1], (side, side), whole, GLOBAL))
        return Layout(tuple(views), image_size)
