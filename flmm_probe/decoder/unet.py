"""The F-LMM mask head: a small U-Net from stacked attention maps to one mask-logit map (docs/design.md step 4).

Input: attention maps (batch, channels, y, x), channels = view kinds x layers x heads, already painted
into image space (see `Layout.to_image` / `AttentionRecord.stacked`). The head
  1. normalises each channel to sum 1 over space, so that heads with flat and peaked attention are
     on one scale (with `log_maps`, then takes its log, floored at LOG_FLOOR and centred per channel: not
     the paper's, but on the organism it separates the partly covered cells and the background that the
     linear maps leave as near-zeros beside the peaks, docs/results.md);
  2. upsamples bilinearly so the long side is `long_side` (24x24 -> 64x64), because a 24x24 grid is
     too coarse for three 2x downsamplings;
  3. zero-pads bottom/right to a multiple of 2**(stages - 1), the U-Net's total downsampling;
  4. runs the U-Net and a 1x1 conv to one logit map, and crops the padding off again.
The output is (batch, Y', X') logits at the upsampled map resolution; `resize_logits` brings them to
the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


LOG_FLOOR = 1e-6  # share of a map: cells below it count as unattended, and zeros get a finite log


@dataclass
class UNetConfig:
    """Sizes of the mask head. Defaults are the paper's (mmseg UNet: base 64, 4 stages, 2 convs per stage).

    in_channels: channels of the input maps, e.g. 32 layers x 32 heads = 1024 for LLaVA-1.5-7B,
        2 kinds x 1024 = 2048 for LLaVA-NeXT-Mistral-7B (global view + stitched tiles).
    long_side: the maps are upsampled so their long side is this many cells (never downsampled).
    log_maps: feed the U-Net the centred log of each normalised map instead of the map.

    Parameter counts (measured with `sum(p.numel() for p in MaskDecoder(cfg).parameters())`):
        in_channels=1024 (LLaVA-1.5-7B):           7,772,609
        in_channels=2048 (LLaVA-NeXT, two kinds):  8,362,433
    """

    in_channels: int
    base_channels: int = 64
    stages: int = 4
    convs_per_stage: int = 2
    long_side: int = 64
    log_maps: bool = False


class ConvBlock(nn.Sequential):
    """`convs` x (3x3 conv, GroupNorm(1 group), ReLU): (B, in_ch, y, x) -> (B, out_ch, y, x).

    The convs carry no bias because the GroupNorm right after each one has its own.
    """

    def __init__(self, in_ch: int, out_ch: int, convs: int) -> None:
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [
                nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, kernel_size=3, padding=1, bias=False),
                nn.GroupNorm(1, out_ch),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class UpConv(nn.Module):
    """Interpolation up-convolution: bilinear x2, then 1x1 conv, GroupNorm(1), ReLU.

    (B, in_ch, y, x) -> (B, out_ch, 2y, 2x). Interpolation instead of a transposed conv avoids
    checkerboard artefacts.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False),
            nn.GroupNorm(1, out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(x)


class MaskDecoder(nn.Module):
    """U-Net mask head. `forward`: maps (B, C, y, x) -> logits (B, Y', X').

    Encoder stage i (width base * 2**i) is a ConvBlock; stages after the first start with a 2x2 max-pool.
    Decoder stage i upsamples stage i+1 with an UpConv to width base * 2**i, concatenates the encoder's
    skip of stage i and runs a ConvBlock. A 1x1 conv turns the base-width features into one logit.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        n = config.convs_per_stage
        widths = [config.base_channels * 2**i for i in range(config.stages)]
        self.encoder = nn.ModuleList(
            ConvBlock(config.in_channels if i == 0 else widths[i - 1], widths[i], n) for i in range(config.stages)
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(UpConv(widths[i + 1], widths[i]) for i in range(config.stages - 1))
        self.decoder = nn.ModuleList(ConvBlock(2 * widths[i], widths[i], n) for i in range(config.stages - 1))
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)

    def prepare(self, maps: torch.Tensor) -> torch.Tensor:
        """Normalise and upsample: (B, C, y, x) non-negative maps -> (B, C, Y', X') float, long side >= long_side.

        Each channel is divided by its sum over space (all-zero channels stay zero); with log_maps, its log
        (floored at LOG_FLOOR) minus that log's spatial mean, so that the zero padding reads as an average cell.
        """
        maps = maps.float()
        maps = maps / maps.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-12)
        if self.config.log_maps:
            maps = maps.clamp(min=LOG_FLOOR).log()
            maps = maps - maps.mean(dim=(-2, -1), keepdim=True)
        h, w = maps.shape[-2:]
        scale = max(1.0, self.config.long_side / max(h, w))
        size = (round(h * scale), round(w * scale))
        if size != (h, w):
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return maps

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """maps: (B, C, y, x) attention maps in image space, C = config.in_channels.

        Returns (B, Y', X') mask logits on the upsampled grid of `prepare` (padding cropped off),
        covering the same image region as the input maps.
        """
        if maps.shape[1] != self.config.in_channels:
            raise ValueError(f"MaskDecoder expects {self.config.in_channels} channels, got {maps.shape[1]}.")
        x = self.prepare(maps).to(self.head.weight.dtype)
        h, w = x.shape[-2:]
        multiple = 2 ** (self.config.stages - 1)
        x = F.pad(x, (0, math.ceil(w / multiple) * multiple - w, 0, math.ceil(h / multiple) * multiple - h))

        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)  # (B, base * 2**i, Yp / 2**i, Xp / 2**i)
        x = skips.pop()
        for i in reversed(range(self.config.stages - 1)):
            x = self.decoder[i](torch.cat([skips[i], self.up[i](x)], dim=1))
        return self.head(x)[:, 0, :h, :w]


def resize_logits(
    logits: torch.Tensor,
    size: tuple[int, int],
    box: tuple[float, float, float, float] | None = None,
) -> torch.Tensor:
    """Bring mask logits to an image's pixel grid, bilinearly.

    logits: (..., Y', X') logits whose grid covers `box`.
    size: (H, W) of the target image, pixels.
    box: (x0, y0, x1, y1) XYXY, in pixels of the target image, of the region the logits cover; default
        the whole image (0, 0, W, H). A box larger than the image (a processor that padded to square:
        e.g. (-80, 0, 560, 640) for (H, W) = (640, 480)) crops the padding off; pixels outside a smaller box
        take the nearest border logit.
    Returns (..., H, W) logits, each sampled at its pixel centre.
    """
    height, width = size
    x0, y0, x1, y1 = box if box is not None else (0.0, 0.0, float(width), float(height))
    lead = logits.shape[:-2]
    flat = logits.reshape(1, -1, *logits.shape[-2:]).float()
    # Pixel centres in the [-1, 1] frame of the logits' box (align_corners=False: -1 and 1 are box edges).
    xs = ((torch.arange(width, device=logits.device) + 0.5 - x0) / (x1 - x0)) * 2 - 1
    ys = ((torch.arange(height, device=logits.device) + 0.5 - y0) / (y1 - y0)) * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    out = F.grid_sample(flat, grid[None], mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(*lead, height, width).to(logits.dtype)
