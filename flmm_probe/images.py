"""Images in, 8-bit RGB out: every PIL mode, EXIF orientation, arrays of any dtype, each error naming its source.

    to_rgb("photo.jpg")          # a path: opened, turned upright by its EXIF orientation tag, converted
    to_rgb(pil_image)            # a PIL image of any mode PIL reads
    to_rgb(array)                # (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array

Value ranges, the same for PIL modes and arrays:
- 8-bit (uint8, modes 1 L P RGB CMYK YCbCr and their alpha forms): as they are; bool: False 0, True 255;
- 16-bit (uint16, modes I;16*): 0..65535, scaled to 0..255; mode I (32-bit integers, how PIL opens some
  16-bit PNGs) and other integer arrays: 0..65535 if any value exceeds 255, else 0..255;
- float (mode F, float arrays): 0..1, scaled to 0..255.
Values outside the range, NaN, negative integers and empty images raise ``ImageError``. Alpha is composited
on white, as transformers' processors do (``image_transforms.convert_to_rgb``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = str | Path | Image.Image | np.ndarray


class ImageError(ValueError):
    """An image cannot be used as it is; the message names the image and says what to change."""


def to_rgb(image: ImageLike, name: str | None = None) -> Image.Image:
    """An (H, W) 8-bit RGB PIL image from ``image`` (see the module docstring). ``name``: how errors call it."""
    if isinstance(image, (str, Path)):
        return _open(Path(image))
    name = name or f"the {type(image).__name__} given"
    if isinstance(image, Image.Image):
        return _from_pil(image, name)
    if isinstance(image, np.ndarray):
        return _from_array(image, name)
    raise TypeError(f"Expected a path, a PIL image or a numpy array, got {type(image).__name__}.")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise ImageError(f"{path}: no such file.")
    try:
        with Image.open(path) as opened:
            upright = ImageOps.exif_transpose(opened)
            upright.load()
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: cannot be read as an image ({err}).") from err
    return _from_pil(upright, str(path))


def _from_pil(image: Image.Image, name: str) -> Image.Image:
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{name} is empty ({image.width}x{image.height} pixels).")
    if image.mode == "RGB":
        return image.copy()
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return _from_array(np.asarray(image), name)
    if "A" in image.mode or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(f"{name} has shape {array.shape}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{name} is empty ({array.shape[1]}x{array.shape[0]} pixels).")
    eight = _eight_bit(array, name)
    if eight.ndim == 3 and eight.shape[2] == 4:
        return _from_pil(Image.fromarray(eight, "RGBA"), name)
    return Image.fromarray(eight).convert("RGB")


def _eight_bit(array: np.ndarray, name: str) -> np.ndarray:
    """uint8 values of ``array`` by the ranges of the module docstring."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{name} holds NaN or infinite values: float images are read in 0..1.")
        if array.min() < 0 or array.max() > 1:
            raise ImageError(f"{name} holds floats outside 0..1 ({array.min()}..{array.max()}): float images are read in "
                             "0..1; divide by the maximum your data uses.")
        return np.round(array * 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ImageError(f"{name} holds integers in {low}..{high}: integer images are read in 0..255 or, above 255, "
                             "0..65535; rescale them.")
        if array.dtype == np.uint16 or high > 255:
            return np.round(array.astype(np.float64) / 257).astype(np.uint8)
        return array.astype(np.uint8)
    raise ImageError(f"{name} has dtype {array.dtype}: give integers, floats in 0..1 or booleans.")
