"""The U-Net mask head: shapes, padding, input normalisation, that it learns, and resize_logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flmm_probe.decoder.unet import MaskDecoder, UNetConfig, resize_logits

LAYERS, HEADS = 2, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def small(in_channels: int, base: int = 8) -> MaskDecoder:
    torch.manual_seed(0)
    return MaskDecoder(UNetConfig(in_channels=in_channels, base_channels=base)).eval()


@pytest.mark.parametrize(
    ("grid", "upsampled"),
    [
        ((24, 24), (64, 64)),  # LLaVA-1.5's grid
        ((16, 24), (43, 64)),  # non-square: 16 * 64 / 24 = 42.7 rounds to 43, padded to 48 inside
        ((5, 3), (64, 38)),  # tall: 3 * 64 / 5 = 38.4
        ((80, 72), (80, 72)),  # already above the long side: not downsampled; 80x72 padded to 80x72
    ],
)
def test_output_is_the_upsampled_grid_with_padding_cropped(grid, upsampled):
    decoder = small(LAYERS * HEADS)
    maps = torch.rand(2, LAYERS * HEADS, *grid)
    assert decoder.prepare(maps).shape == (2, LAYERS * HEADS, *upsampled)
    with torch.no_grad():
        assert decoder(maps).shape == (2, *upsampled)


def test_two_view_kinds_stacked_as_channels():
    decoder = small(2 * LAYERS * HEADS)
    maps = torch.cat([torch.rand(1, LAYERS * HEADS, 16, 24), torch.rand(1, LAYERS * HEADS, 16, 24)], dim=1)
    with torch.no_grad():
        assert decoder(maps).shape == (1, 43, 64)
    with pytest.raises(ValueError, match="channels"):
        small(LAYERS * HEADS)(maps)


def test_padding_is_zeros_bottom_right_and_cropped_off():
    # 43x64 is padded to 48x64 inside; padding the input ourselves (zeros add nothing to the channel
    # sums, the long side is already 64) must give the same logits on the top-left 43x64 block.
    decoder = small(4)
    maps = torch.rand(1, 4, 43, 64)
    with torch.no_grad():
        cropped = decoder(maps)
        padded = decoder(F.pad(maps, (0, 0, 0, 5)))
    assert cropped.shape == (1, 43, 64) and padded.shape == (1, 48, 64)
    torch.testing.assert_close(cropped, padded[:, :43])


def test_each_channel_is_normalised_to_sum_one():
    decoder = small(4)
    maps = torch.rand(2, 4, 64, 64)  # no upsampling: the prepared map is the normalised input
    prepared = decoder.prepare(maps)
    torch.testing.assert_close(prepared.sum(dim=(-2, -1)), torch.ones(2, 4))
    # Scaling a channel changes nothing downstream; an all-zero channel stays zero instead of NaN.
    scale = torch.tensor([1.0, 10.0, 0.1, 1e4]).view(1, 4, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(decoder(maps * scale), decoder(maps), atol=1e-5, rtol=1e-4)
        maps[:, 2] = 0
        assert torch.isfinite(decoder(maps)).all()


def test_log_maps_are_centred_logs_of_the_normalised_maps():
    torch.manual_seed(0)
    decoder = MaskDecoder(UNetConfig(in_channels=3, base_channels=8, log_maps=True)).eval()
    maps = torch.rand(2, 3, 64, 64)  # no upsampling
    maps[0, 1, :32] = 0  # below the floor: a patch no attention reaches
    p = maps / maps.sum(dim=(-2, -1), keepdim=True)
    expected = p.clamp(min=1e-6).log()
    torch.testing.assert_close(decoder.prepare(maps), expected - expected.mean(dim=(-2, -1), keepdim=True))
    scale = torch.tensor([1.0, 1e3, 1e-2]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(decoder(maps * scale), decoder(maps), atol=1e-5, rtol=1e-4)
        maps[:, 2] = 0
        assert torch.isfinite(decoder(maps)).all()


def test_a_few_steps_fit_a_toy_target():
    # Channel 0 points at the target blob, channel 1 is noise: the head should learn to read channel 0.
    torch.manual_seed(0)
    target = torch.zeros(4, 64, 64)
    maps = torch.rand(4, 2, 24, 24) * 0.1
    for b, (y, x) in enumerate([(4, 4), (12, 6), (6, 15), (16, 16)]):
        maps[b, 0, y : y + 6, x : x + 6] += 1.0
        y0, x0 = round(y * 64 / 24), round(x * 64 / 24)
        target[b, y0 : y0 + 16, x0 : x0 + 16] = 1.0
    decoder = small(2)
    decoder.train()
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        logits = decoder(maps)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    # Not just the background bias: the blobs are found (IoU of logits > 0 with the target).
    pred, truth = logits > 0, target > 0
    assert (pred & truth).sum() / (pred | truth).sum() > 0.7


def test_resize_logits_matches_interpolate_and_crops_square_padding():
    logits = torch.randn(3, 43, 64)
    torch.testing.assert_close(
        resize_logits(logits, (100, 150)),
        F.interpolate(logits[None], size=(100, 150), mode="bilinear", align_corners=False)[0],
        atol=1e-4,
        rtol=0,
    )
    # A 48x64 image padded to a 64x64 square, 8 rows above and below: the logits cover (0, -8, 64, 56).
    square = torch.full((1, 64, 64), -5.0)
    square[:, 8:56] = torch.arange(64.0)  # the image part: logits = column index
    image = resize_logits(square, (48, 64), box=(0, -8, 64, 56))
    torch.testing.assert_close(image, torch.arange(64.0).expand(1, 48, 64))
