"""Where the image tokens sit in the sequence and how they tile the image.

A `Layout` is data, built by a backbone adapter from the processor's output: a list of `View`s, each a
row-major grid of image tokens covering a box of the ORIGINAL image (pixels, XYXY; a box may extend past
the image where the processor padded it, or cover only part of it where it cropped). Views of one `kind`
("global": the whole-image view; "tiles": high-resolution crops) are painted into one image-space
canvas per kind. Everything downstream works on those canvases and never needs to know the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GLOBAL = "global"
TILES = "tiles"


@dataclass(frozen=True)
class View:
    """One grid of image tokens.

    positions: (h*w,) LongTensor of sequence positions, row-major over the grid.
    grid: (h, w) tokens.
    box: (x0, y0, x1, y1) region of the original image that the grid covers, in pixels.
    kind: "global" or "tiles".
    """

    positions: torch.Tensor
    grid: tuple[int, int]
    box: tuple[float, float, float, float]
    kind: str = GLOBAL

    def __post_init__(self) -> None:
        h, w = self.grid
        if self.positions.numel() != h * w:
            raise ValueError(f"A {h}x{w} view needs {h * w} token positions, got {self.positions.numel()}.")
        x0, y0, x1, y1 = self.box
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"View box {self.box} is empty.")


@dataclass(frozen=True)
class Layout:
    """The image tokens of one sample: its views and the original image size (height, width)."""

    views: tuple[View, ...]
    image_size: tuple[int, int]

    @property
    def key_positions(self) -> torch.Tensor:
        """(n_key,) sequence positions of every image token, view after view."""
        return torch.cat([v.positions for v in self.views])

    @property
    def kinds(self) -> list[str]:
        """View kinds in order of first appearance."""
        return list(dict.fromkeys(v.kind for v in self.views))

    def canvas_size(self, kind: str) -> tuple[int, int]:
        """(Y, X) of the image-space canvas for `kind`: one cell per token of its finest view."""
        height, width = self.image_size
        views = [v for v in self.views if v.kind == kind]
        cell_y = min((v.box[3] - v.box[1]) / v.grid[0] for v in views)
        cell_x = min((v.box[2] - v.box[0]) / v.grid[1] for v in views)
        return max(1, round(height / cell_y)), max(1, round(width / cell_x))

    def to_image(self, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Paint per-token maps into image space, one canvas per view kind.

        maps: (..., n_key), columns ordered as `key_positions`.
        Returns {kind: (..., Y, X)}. A view whose cells coincide with canvas cells (a single view, stitched
        tiles) is pasted exactly; any other view is sampled bilinearly at the cell centres inside its box.
        Where views overlap they are averaged; cells that no view covers (a centre crop) are 0.
        """
        lead = maps.shape[:-1]
        flat = maps.reshape(-1, maps.shape[-1]).float()
        height, width = self.image_size
        canvases = {}
        for kind in self.kinds:
            rows, cols = self.canvas_size(kind)
            total = flat.new_zeros(flat.shape[0], rows, cols)
            count = flat.new_zeros(rows, cols)
            # Canvas cell centres in image pixels.
            cy = (torch.arange(rows, device=flat.device) + 0.5) * height / rows
            cx = (torch.arange(cols, device=flat.device) + 0.5) * width / cols
            start = 0
            for view in self.views:
                h, w = view.grid
                n = h * w
                if view.kind == kind:
                    view_map = flat[:, start : start + n].reshape(-1, h, w)
                    offset = _grid_offset(view, rows, cols, height, width)
                    if offset is not None:
                        _paste(total, count, view_map, *offset)
                    else:
                        _sample(total, count, view_map, view.box, cy, cx)
                start += n
            canvases[kind] = (total / count.clamp(min=1)).reshape(*lead, rows, cols)
        return canvases


def _grid_offset(view: View, rows: int, cols: int, height: int, width: int) -> tuple[int, int] | None:
    """(row, col) of the view's first cell on the canvas if its cells coincide with canvas cells, else None."""
    x0, y0, x1, y1 = view.box
    cell_h, cell_w = height / rows, width / cols
    h, w = view.grid
    same_size = math.isclose((y1 - y0) / h, cell_h, rel_tol=1e-6) and math.isclose((x1 - x0) / w, cell_w, rel_tol=1e-6)
    row, col = y0 / cell_h, x0 / cell_w
    if same_size and math.isclose(row, round(row), abs_tol=1e-6) and math.isclose(col, round(col), abs_tol=1e-6):
        return round(row), round(col)
    return None


def _paste(total: torch.Tensor, count: torch.Tensor, view_map: torch.Tensor, row: int, col: int) -> None:
    """Add an aligned view (c, h, w) into the canvas (c, Y, X) at (row, col), clipped to the canvas."""
    h, w = view_map.shape[-2:]
    rows, cols = count.shape
    r0, r1, c0, c1 = max(row, 0), min(row + h, rows), max(col, 0), min(col + w, cols)
    if r0 < r1 and c0 < c1:
        total[:, r0:r1, c0:c1] += view_map[:, r0 - row : r1 - row, c0 - col : c1 - col]
        count[r0:r1, c0:c1] += 1


def _sample(
    total: torch.Tensor,
    count: torch.Tensor,
    view_map: torch.Tensor,
    box: tuple[float, float, float, float],
    cy: torch.Tensor,
    cx: torch.Tensor,
) -> None:
    """Add a view (c, h, w) resampled bilinearly at the canvas cell centres (cy, cx pixels) inside its box."""
    x0, y0, x1, y1 = box
    u = (cx - x0) / (x1 - x0)  # 0..1 inside the box
    v = (cy - y0) / (y1 - y0)
    inside = ((v >= 0) & (v < 1))[:, None] & ((u >= 0) & (u < 1))[None, :]
    grid = torch.stack(torch.broadcast_tensors(u[None, :] * 2 - 1, v[:, None] * 2 - 1), dim=-1)
    sampled = F.grid_sample(view_map[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)
    total += sampled[0] * inside
    count += inside


def square_box(image_size: tuple[int, int], pad: bool) -> tuple[float, float, float, float]:
    """Box of a square view of an image: padded to a square around it, or centre-cropped to a square.

    image_size: (height, width). A processor that pads to square sees a box larger than the image; one
    that resizes the short side and centre-crops sees the central square of the image.
    """
    height, width = image_size
    side = max(height, width) if pad else min(height, width)
    x0, y0 = (width - side) / 2, (height - side) / 2
    return (x0, y0, x0 + side, y0 + side)


def token_runs(positions: torch.Tensor) -> list[torch.Tensor]:
    """Split sorted sequence positions into runs of consecutive positions."""
    if positions.numel() == 0:
        return []
    breaks = torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1
    return list(torch.tensor_split(positions, breaks.tolist()))
