"""Idefics3 (`idefics3`) and SmolVLM (`smolvlm`): one run of <image> tokens per tile, each after its tag.

The image processor resizes the image (longest edge to `size`, aspect kept), then stretches it to whole
multiples of the tile side (`resize_for_vision_encoder`: rows x cols tiles, so the whole image maps onto
the whole tile canvas) and cuts it row-major into tiles; the whole image squashed to one tile comes last.
The processor writes one run per tile:

    <fake><row_1_col_1><image>xN ... <fake><row_R_col_C><image>xN \n\n <fake><global-img><image>xN<fake>

(a small image is not split: only the global run). Each run is N = image_seq_len tokens, the tile's
patches pixel-shuffled to side x side, row-major. The tile grid is read from the row/col tags in the
sequence itself, since the processor drops `rows` and `cols` from its output.
"""

from __future__ import annotations

import math
import re

import torch
from transformers import BatchFeature

from ..layout import GLOBAL, TILES, Layout, View, token_runs
from .base import Backbone, image_positions, register_backbone

_TILE_TAG = re.compile(r"<row_(\d+)_col_(\d+)>")


@register_backbone("idefics3", "smolvlm")
class Idefics3Backbone(Backbone):
    """Idefics3 / SmolVLM: one "tiles" view per tagged tile (its own box), the global run as "global"."""

    view_kinds = (GLOBAL, TILES)

    def layout(self, inputs: BatchFeature, index: int, image_size: tuple[int, int]) -> Layout:
        height, width = image_size
        per_tile = self.processor.image_seq_len
        side = math.isqrt(per_tile)
        if side * side != per_tile:
            raise ValueError(f"image_seq_len {per_tile} is not a square grid of tokens.")
        ids = inputs["input_ids"][index]
        runs = token_runs(image_positions(ids, self.image_token_id))
        # Idefics3 calls the tag `global_image_tag`, SmolVLM `global_image_token`.
        global_tag = getattr(self.processor, "global_image_token", None) or self.processor.global_image_tag

        tiles: list[tuple[int, int, torch.Tensor]] = []  # (row, col, positions), 0-based
        global_runs: list[torch.Tensor] = []
        for run in runs:
            if run.numel() != per_tile:
                raise ValueError(f"An image-token run has {run.numel()} tokens, expected image_seq_len={per_tile}.")
            tag = self.processor.tokenizer.convert_ids_to_tokens(int(ids[run[0] - 1]))
            match = _TILE_TAG.fullmatch(tag)
            if match:
                tiles.append((int(match[1]) - 1, int(match[2]) - 1, run))
            elif tag == global_tag:
                global_runs.append(run)
            else:
                raise ValueError(f"An image-token run follows {tag!r}, not a <row_i_col_j> or {global_tag} tag.")
        if len(global_runs) != 1:
            raise ValueError(f"Expected one global image run, found {len(global_runs)} (one image per sample).")

        views = []
        if tiles:
            rows, cols = max(r for r, _, _ in tiles) + 1, max(c for _, c, _ in tiles) + 1
            if sorted((r, c) for r, c, _ in tiles) != [(r, c) for r in range(rows) for c in range(cols)]:
                raise ValueError(f"The tile tags do not form a full {rows}x{cols} grid.")
            # The image is stretched onto the rows x cols canvas: each tile is W/cols x H/rows original pixels.
            tile_w, tile_h = width / cols, height / rows
            views = [
                View(run, (side, side), (c * tile_w, r * tile_h, (c + 1) * tile_w, (r + 1) * tile_h), TILES)
                for r, c, run in tiles
            ]
        views.append(View(global_runs[0], (side, side), (0.0, 0.0, float(width), float(height)), GLOBAL))
        return Layout(tuple(views), image_size)
