"""Image files: finding them in a folder, reading them as tensors, writing reconstructions."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import ExifTags, Image

from hpcm.files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# What PIL raises on broken, truncated or hostile files (varies by format plugin).
PIL_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    Image.DecompressionBombError,
)


class ImageError(ValueError):
    """An image file that cannot be read."""


# Alpha is composited onto this background, a fraction of the file's full scale (1.0: white);
# fully opaque pixels keep their colour exactly.
ALPHA_BACKGROUND = 1.0
# EXIF orientation (tag 274) -> what turns the stored pixels upright, as numpy operations on an
# (H, W, C) array (EXIF 2.32, section 4.6.4; the same table as PIL.ImageOps.exif_transpose).
_ORIENTATION = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 1)[:, ::-1],
    8: lambda a: np.rot90(a, 1),
}
# 16-bit colour PNGs: Pillow opens them as 8-bit images holding the high byte of each sample
# (Pillow 13: raw mode "RGB;16B"). Decoding the same data with the little-endian raw mode gives
# the other byte of each sample, the low one; together they are the 16-bit values.
_LOW_BYTES_RAWMODE = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}
# Modes Pillow converts to RGB without a choice to make (palette and CMYK: no colour management,
# an embedded ICC profile is not applied).
_CONVERTED = {
    "1": "L",
    "P": "RGBA",
    "PA": "RGBA",
    "La": "LA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


class ImageInfo(NamedTuple):
    """What a file held, before it became RGB: Pillow's mode, the bits per sample, whether it was
    gray, whether an alpha channel with transparent pixels was composited onto white, and whether
    its EXIF orientation turned it."""

    mode: str
    bits: int
    gray: bool
    composited: bool
    oriented: bool

    def notes(self) -> str:
        """A short description for a user, e.g. ``16-bit gray, alpha composited onto white``."""
        kind = f"{self.bits}-bit {'gray' if self.gray else 'colour'} ({self.mode})"
        extra = ["alpha composited onto white"] * self.composited + ["EXIF-rotated"] * self.oriented
        return ", ".join([kind, *extra])


def find_images(root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """All files under ``root`` (recursive) with an image extension (any case), sorted."""
    suffixes = {e.lower() for e in extensions}
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened image (1: upright), read without decoding the pixels."""
    if image.format == "PNG":
        # Pillow's getexif() decodes a whole PNG to look for an eXIf chunk after the pixel data;
        # the PNG specification puts it before (third edition, section 11.3.6.1).
        exif = Image.Exif()
        if image.info.get("exif"):
            exif.load(image.info["exif"])
    else:
        exif = image.getexif()
    orientation = exif.get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in _ORIENTATION else 1


def _sixteen_bit_colour(image: Image.Image) -> str | None:
    """The raw mode of a 16-bit colour PNG as Pillow opened it (e.g. ``RGB;16B``), else None."""
    if image.format != "PNG" or image.mode not in ("RGB", "RGBA") or len(image.tile) != 1:
        return None
    rawmode = image.tile[0].args
    return rawmode if isinstance(rawmode, str) and rawmode.endswith(";16B") else None


def _samples(image: Image.Image, path: str | Path) -> tuple[np.ndarray, int]:
    """The (H, W, C) samples of an image as 1 (gray), 2 (gray, alpha), 3 (RGB) or 4 (RGBA)
    channels, and their bits (8 or 16)."""
    rawmode = _sixteen_bit_colour(image)
    if rawmode in _LOW_BYTES_RAWMODE:
        high = np.asarray(image, dtype=np.uint16)
        with Image.open(path) as again:
            again.tile = [again.tile[0]._replace(args=_LOW_BYTES_RAWMODE[rawmode])]
            low = np.asarray(again, dtype=np.uint16)
        return (high << 8) | low, 16
    if rawmode is not None:
        raise ImageError(
            f"16-bit {rawmode[:-4]} PNGs are not supported (Pillow reads only their high "
            "byte): save it as 8-bit, or as 16-bit gray or RGB"
        )
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image, dtype=np.uint16)[..., None], 16
    mode = _CONVERTED.get(image.mode, image.mode)
    if mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageError(
            f"images of mode {image.mode} are not supported (8-bit or 16-bit gray or RGB, "
            "with or without alpha, palette, CMYK)"
        )
    array = np.asarray(image if mode == image.mode else image.convert(mode))
    return array.reshape(*array.shape[:2], -1), 8


def _rgb(samples: np.ndarray, bits: int) -> tuple[np.ndarray, bool]:
    """(H, W, 3) RGB of (H, W, C) gray, gray + alpha, RGB or RGBA samples (alpha composited onto
    :data:`ALPHA_BACKGROUND`), and whether any pixel was transparent."""
    composited = False
    if samples.shape[2] in (2, 4):
        colour, alpha = samples[..., :-1], samples[..., -1:]
        top = (1 << bits) - 1
        composited = bool((alpha < top).any())
        if composited:
            weight = alpha / top
            blend = colour * weight + ALPHA_BACKGROUND * top * (1 - weight)
            colour = np.rint(blend).astype(samples.dtype)
        samples = colour
    if samples.shape[2] == 1:
        samples = np.repeat(samples, 3, axis=2)
    return np.ascontiguousarray(samples), composited


def read_pixels(
    path: str | Path, box: tuple[int, int, int, int] | None = None
) -> tuple[np.ndarray, ImageInfo]:
    """An image file, upright (EXIF orientation), as an (H, W, 3) RGB array: uint8 for 8-bit
    files, uint16 for 16-bit ones (gray, RGB and RGBA PNGs), and what it held (:class:`ImageInfo`).

    Gray is repeated into three channels; alpha is composited onto white
    (:data:`ALPHA_BACKGROUND`), which leaves fully opaque pixels as they are; palette, CMYK and
    YCbCr images are converted by Pillow. ``box`` = (left, top, right, bottom) in upright
    coordinates: for most files only that region is converted (all are decoded whole: PNG and
    JPEG cannot skip to a region). One-line :class:`ImageError` for a file that cannot be read,
    or one of a mode it refuses.
    """
    try:
        with Image.open(path) as image:
            orientation, mode = _orientation(image), image.mode
            if box is not None and orientation == 1 and _sixteen_bit_colour(image) is None:
                samples, bits = _samples(image.crop(box), path)
            else:
                samples, bits = _samples(image, path)
                if orientation != 1:
                    samples = _ORIENTATION[orientation](samples)
                if box is not None:
                    samples = samples[box[1] : box[3], box[0] : box[2]]
    except PIL_ERRORS as e:
        raise ImageError(f"cannot read image {path}: {e}") from None
    rgb, composited = _rgb(samples, bits)
    return rgb, ImageInfo(mode, bits, samples.shape[2] <= 2, composited, orientation != 1)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, upright (EXIF orientation), from its header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            return (width, height) if _orientation(image) in (5, 6, 7, 8) else (height, width)
    except PIL_ERRORS as e:
        raise ImageError(f"cannot read image {path}: {e}") from None


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as they are; uint16 ones rounded to the nearest of 256 levels (x / 257)."""
    if pixels.dtype == np.uint8:
        return pixels
    return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 or uint16 pixels -> (1, 3, H, W) float tensor in [0, 1]."""
    top = float(np.iinfo(pixels.dtype).max)
    x = torch.from_numpy(pixels.astype(np.float32)).div_(top)
    return x.permute(2, 0, 1).unsqueeze(0)


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as a (1, 3, H, W) float tensor in [0, 1] (:func:`read_pixels`: upright, RGB,
    16-bit files at their full precision)."""
    return to_tensor(read_pixels(path)[0])


def write_image(x: torch.Tensor, path: str | Path) -> None:
    """Write the first image of a (B, 3, H, W) tensor in [0, 1] as an 8-bit file (format from
    the extension). Written atomically (:func:`hpcm.files.atomic_write`): never a partial file."""
    path = Path(path)
    arr = x[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ImageError(f"cannot write image {path}: unknown extension {path.suffix!r}")
    image = Image.fromarray(arr)
    try:
        atomic_write(path, lambda file: image.save(file, format=image_format))
    except (OSError, ValueError, KeyError) as e:
        raise ImageError(f"cannot write image {path}: {e}") from None
