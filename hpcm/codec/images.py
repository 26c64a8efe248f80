"""Image files: finding them in a folder, reading them as tensors, writing reconstructions."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

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


def find_images(root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """All files under ``root`` (recursive) with an image extension (any case), sorted."""
    suffixes = {e.lower() for e in extensions}
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def read_image(path: str | Path) -> torch.Tensor:
    """An RGB image file as a (1, 3, H, W) float tensor in [0, 1]."""
    try:
        with Image.open(path) as img:
            arr = np.array(img.convert("RGB"))
    except PIL_ERRORS as e:
        raise ImageError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).float().div(255)


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
