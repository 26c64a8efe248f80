"""Prepare an image folder for fast training: every image once as an uncompressed array.

    python -m hpcm.train.prepare SRC DST
    python train.py data=folder data.train_dir=DST data.test_dir=TEST_DIR

Each image under SRC (recursively) becomes ``DST/<relative path>.npy``, an (H, W, 3) uint8 array
in NumPy's format (as :func:`hpcm.codec.images.read_pixels` reads it: upright, RGB, 16-bit files
rounded to 8 bits). :class:`hpcm.train.data.ImageFolder` memory-maps these and reads only the
rows of each crop, so a training sample costs a copy of its crop instead of the decoding of a whole
PNG or JPEG file (``benchmarks/data.py`` measures both); the samples, and so the training run,
are exactly those of SRC for the same seed. The price is disk space: 3 bytes per pixel, about
twice to ten times a folder of PNG or JPEG files.

Files are written under a temporary name and renamed when complete, and files already in DST are
kept: an interrupted run continues where it stopped when started again. Unreadable images are
skipped with one warning naming them.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from hpcm.codec.images import IMAGE_EXTENSIONS, ImageError, find_images, read_pixels, to_8bit
from hpcm.files import atomic_write
from hpcm.train.data import PREPARED_SUFFIX, DataError, DataWarning


def prepare_folder(source: str | Path, target: str | Path) -> dict[str, int]:
    """Write the arrays of every image under ``source`` to ``target``; returns the counts
    ``written``, ``kept`` (already there), ``skipped`` (unreadable) and the ``bytes`` of
    ``target``'s arrays."""
    source, target = Path(source).resolve(), Path(target).resolve()
    if not source.is_dir():
        raise DataError(f"image folder not found: {source}")
    if target == source or source in target.parents:
        raise DataError(f"the prepared folder {target} must lie outside {source}")
    images = find_images(source, IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"no image files in {source}")
    counts = {"written": 0, "kept": 0, "skipped": 0, "bytes": 0}
    unreadable = []
    for path in images:
        out = target / f"{path.relative_to(source)}{PREPARED_SUFFIX}"
        if out.exists():
            counts["kept"] += 1
        elif _write_array(path, out):
            counts["written"] += 1
        else:
            unreadable.append(path)
            continue
        counts["bytes"] += out.stat().st_size
    counts["skipped"] = len(unreadable)
    if unreadable:
        listed = ", ".join(str(p) for p in unreadable[:5])
        warnings.warn(
            f"skipped {len(unreadable)} unreadable image file(s) under {source}: {listed}",
            DataWarning,
            stacklevel=2,
        )
    return counts


def _write_array(path: Path, out: Path) -> bool:
    try:
        pixels = to_8bit(read_pixels(path)[0])  # the 8-bit samples ImageFolder would crop
    except ImageError:
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    # Complete files only, also when interrupted: a file that exists is kept by the next run.
    atomic_write(out, lambda file: np.save(file, pixels, allow_pickle=False))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpcm.train.prepare",
        description="Store every image of a folder as an uncompressed array for fast training.",
    )
    parser.add_argument("source", help="image folder (searched recursively)")
    parser.add_argument("target", help="folder for the arrays (data.train_dir of the run)")
    args = parser.parse_args(argv)
    try:
        counts = prepare_folder(args.source, args.target)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"{counts['written']} written, {counts['kept']} already there, "
        f"{counts['skipped']} unreadable; {counts['bytes'] / 2**20:.1f} MiB in {args.target}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
