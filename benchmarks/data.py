"""Training-sample throughput of one data-loader worker, old pipeline against new, in one run.

    python benchmarks/data.py                                    # ../shared/data folders
    python benchmarks/data.py --folders DIR1 DIR2 --samples 200 --crop 256

For each folder, three ways to make the same seeded 256x256 training crops (random position and
flips) are timed in this process with one torch thread, as a loader worker runs them:

- ``old``: the plain pipeline (PIL decode, ``convert("RGB")`` and ``np.array`` of the
  whole image, crop, flips, float32 in the worker), kept here as the reference;
- ``new``: :class:`hpcm.train.data.ImageFolder` on the image files (uint8 crops; only the crop
  is converted and copied; float is made on the device);
- ``prepared``: the same on the folder written once by ``python -m hpcm.train.prepare``
  (memory-mapped arrays: only the crop's rows are read, no decoding).

Variants run interleaved over the same keys, round after round, so that load changes of a shared
machine hit them alike. Reported: images/s per worker (median over rounds), the ratio to ``old``,
and what ``--workers`` such workers would deliver if each had a core to itself. The ``prepared``
folder is written to a temporary directory first (not timed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_FOLDERS = [SHARED / "wikimedia49", SHARED / "train-bsds500"]


def old_sample(path: Path, crop: int, seed: int):
    """The sample of the plain pipeline (the same crop and flips as ``new``)."""
    import numpy as np
    import torch
    from PIL import Image

    from hpcm.train.data import random_crop_flip

    with Image.open(path) as image:
        pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
    generator = torch.Generator().manual_seed(seed)
    return random_crop_flip(pixels, (crop, crop), generator).float().div_(255.0)


def measure_folder(folder: Path, args: argparse.Namespace, scratch: Path) -> list[dict]:
    import torch

    from hpcm.train.data import DataWarning, ImageFolder
    from hpcm.train.prepare import prepare_folder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # small or odd files are simply not used
        new = ImageFolder(folder, args.crop, train=True, verify=False, skip_bad_images=True)
        prepared_dir = scratch / folder.name
        prepare_folder(folder, prepared_dir)
        prepared = ImageFolder(
            prepared_dir, args.crop, train=True, verify=False, skip_bad_images=True
        )
    by_name = {p.name: i for i, p in enumerate(prepared.paths)}
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(len(new), (args.samples,), generator=generator).tolist()
    keys = [(i, 1000 + n) for n, i in enumerate(picks)]
    prepared_keys = [(by_name[new.paths[i].name + ".npy"], seed) for i, seed in keys]
    first = keys[0]
    reference = old_sample(new.paths[first[0]], args.crop, first[1])
    assert torch.equal(new[first].float().div(255.0), reference), "new sample differs from old"
    assert torch.equal(prepared[prepared_keys[0]], new[first]), "prepared sample differs"

    variants = {
        "old": lambda: [old_sample(new.paths[i], args.crop, s) for i, s in keys],
        "new": lambda: [new[key] for key in keys],
        "prepared": lambda: [prepared[key] for key in prepared_keys],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        names = list(variants)[r % 3 :] + list(variants)[: r % 3]
        for name in names:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    rows = []
    old_rate = args.samples / statistics.median(times["old"])
    for name, values in times.items():
        rate = args.samples / statistics.median(values)
        rows.append(
            {
                "folder": folder.name,
                "images": len(new),
                "variant": name,
                "images_per_s": rate,
                "ratio": rate / old_rate,
                "loader_images_per_s": rate * args.workers,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folders", nargs="+", type=Path, default=DEFAULT_FOLDERS)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--samples", type=int, default=60, help="samples per round (default 60)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--workers", type=int, default=8, help="loader workers to project")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(f"error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.samples < 1 or args.rounds < 1 or args.workers < 1:
        print("error: --samples, --rounds and --workers must be >= 1", file=sys.stderr)
        return 1
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)  # a loader worker
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for folder in args.folders:
            rows += measure_folder(folder, args, Path(scratch))
    print(
        f"{args.crop}x{args.crop} training crops, one process, 1 torch thread, "
        f"{args.samples} samples x {args.rounds} rounds; torch {torch.__version__}"
    )
    print(
        f"{'folder':<16} {'images':>6} {'variant':<9} {'img/s/worker':>12} {'ratio':>6} "
        f"{f'{args.workers} workers':>10}"
    )
    for row in rows:
        print(
            f"{row['folder']:<16} {row['images']:>6} {row['variant']:<9} "
            f"{row['images_per_s']:>12.1f} {row['ratio']:>6.2f} {row['loader_images_per_s']:>10.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
