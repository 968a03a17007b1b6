"""Every PIL mode, EXIF orientation and array dtype becomes the right 8-bit RGB image, or a named error."""

import numpy as np
import pytest
from PIL import Image

from flmm_probe.images import ImageError, to_rgb

GREY = np.array([[0, 64], [128, 255]], np.uint8)  # (2, 2) reference values


def _rgb(image) -> np.ndarray:
    out = to_rgb(image)
    assert out.mode == "RGB"
    return np.asarray(out)


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "CMYK", "YCbCr", "LA", "RGBA", "I;16", "I", "F"])
def test_every_mode_of_a_grey_image_keeps_its_values(mode, tmp_path):
    grey = Image.fromarray(GREY)
    if mode == "I;16":
        image = Image.fromarray(GREY.astype(np.uint16) * 257)
        assert image.mode == "I;16"
    elif mode == "I":
        image = Image.fromarray(GREY.astype(np.int32) * 257)
    elif mode == "F":
        image = Image.fromarray(GREY.astype(np.float32) / 255)
    else:
        image = grey.convert(mode)
    assert image.mode == mode
    tolerance = 2 if mode in ("CMYK", "YCbCr") else 0  # PIL's own colour-space rounding
    assert np.abs(_rgb(image).astype(int) - GREY[..., None]).max() <= tolerance
    if mode in ("L", "RGB", "LA", "RGBA", "I;16", "P"):  # the modes PNG stores, through a file
        image.save(tmp_path / "x.png")
        assert np.abs(_rgb(tmp_path / "x.png").astype(int) - GREY[..., None]).max() <= tolerance


def test_bilevel_and_alpha():
    assert (_rgb(Image.fromarray(GREY > 100)) == np.where(GREY > 100, 255, 0)[..., None]).all()
    clear = Image.fromarray(np.zeros((2, 2, 4), np.uint8), "RGBA")  # black, fully transparent
    assert (_rgb(clear) == 255).all(), "transparent pixels are composited on white"


def test_exif_orientation_turns_the_image_upright(tmp_path):
    wide = np.zeros((2, 4, 3), np.uint8)
    wide[0, 0] = 255  # top-left pixel white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turns it 90 degrees clockwise
    Image.fromarray(wide).save(tmp_path / "r.png", exif=exif)
    upright = _rgb(tmp_path / "r.png")
    assert upright.shape == (4, 2, 3) and upright[0, -1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("array,expected", [
    (GREY, GREY),
    (GREY.astype(np.uint16) * 257, GREY),
    (GREY.astype(np.int64), GREY),  # integers up to 255: 8-bit
    (GREY.astype(np.int64) * 257, GREY),  # above 255: 16-bit
    (GREY.astype(np.float64) / 255, GREY),
    (GREY[..., None], GREY),
    (np.repeat(GREY[..., None], 3, -1), GREY),
])
def test_arrays_of_any_dtype_read_in_their_documented_range(array, expected):
    assert (_rgb(array) == expected[..., None]).all()


@pytest.mark.parametrize("image,message", [
    (np.zeros((0, 4, 3), np.uint8), "is empty"),
    (Image.new("RGB", (0, 3)), "is empty"),
    (np.full((2, 2), 1.5), "floats outside 0..1"),
    (np.full((2, 2), np.nan), "NaN or infinite"),
    (np.full((2, 2), -1), "integers in -1..-1"),
    (np.zeros((2, 2, 2), np.uint8), "expected \\(H, W\\)"),
    (np.zeros((2, 2), complex), "dtype complex"),
])
def test_bad_images_are_refused_by_name(image, message):
    with pytest.raises(ImageError, match=message):
        to_rgb(image)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="nothing.png: no such file"):
        to_rgb(tmp_path / "nothing.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.jpg: cannot be read"):
        to_rgb(tmp_path / "bad.jpg")
    with pytest.raises(TypeError, match="path, a PIL image or a numpy array"):
        to_rgb(3)
