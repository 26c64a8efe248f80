"""Parallel evaluation: a sweep's checkpoints x images with ``evaluate.py --jobs 1`` and
``--jobs N`` (and one process of N threads, what evaluate did before ``--jobs``), in one run.

    python benchmarks/eval_jobs.py KODAK_DIR                      # 8 tiny and 2 hpcm_base, 24 images
    python benchmarks/eval_jobs.py KODAK_DIR --sweeps tiny --limit 4 --repeat 3

Each sweep's checkpoints are made here in a temporary folder: random weights (std ``gain /
sqrt(fan_in)``, a different gain per checkpoint, as a lambda sweep gives different rates), so
that entropy coding does real work. Every configuration runs the whole ``evaluate.main`` (real
bitstreams, CSV, JSON, plots) in this process; ``--jobs N`` includes the start-up of its worker
processes, and its first run that of the server process they are forked from (one import of the
package, which every ``evaluate.py --jobs N`` command pays once; later runs here reuse the
server: compare the min-max column). The configurations alternate within each repeat; the table gives the median wall time
and its ratio to ``--jobs 1``, and says whether the per-image bpp, PSNR and MS-SSIM of ``--jobs N``
equal those of ``--jobs 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from codec import non_trivial_weights  # this folder: sys.path[0] of a script

import hpcm
from hpcm.codec.checkpoint import atomic_torch_save, model_checkpoint
from hpcm.eval import evaluate

# (model, checkpoints, weight gains): the rate grows steeply with the gain; tiny's gains give
# about 0.15 to 0.7 bpp on kodim01, hpcm_base's about 0.4 bpp (benchmarks/codec.py).
SWEEPS = {"tiny": ("tiny", 8, (0.82, 0.95)), "hpcm_base": ("hpcm_base", 2, (0.65, 0.75))}
TIMED_COLUMNS = ("enc_time", "dec_time")


def make_sweep(root: Path, model_name: str, count: int, gains: tuple[float, float]) -> Path:
    """``count`` runs ``root/N/epoch_best.pth.tar`` of one model, gains spread over ``gains``."""
    for n in range(count):
        gain = gains[0] + (gains[1] - gains[0]) * n / max(count - 1, 1)
        model = hpcm.build_model(model_name)
        non_trivial_weights(model, gain=gain, seed=n)
        ckpt = model_checkpoint(model)
        ckpt["config"] = {"optimizer": {"name": "adam"}, "lmbda": round(gain / 100, 6)}
        atomic_torch_save(ckpt, root / str(n) / "epoch_best.pth.tar")
    return root


def results_of(out: Path) -> list[dict]:
    """The per-image rows of an evaluation, without the timing columns."""
    with open(out / evaluate.CSV_NAME, newline="") as f:
        return [
            {k: v for k, v in row.items() if k not in TIMED_COLUMNS} for row in csv.DictReader(f)
        ]


def run_once(sweep: Path, dataset: Path, limit: int | None, flags: list[str], out: Path) -> float:
    argv = [str(sweep), "--dataset", str(dataset), "--device", "cpu", "--out", str(out), *flags]
    if limit:
        argv += ["--limit", str(limit)]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the summary; the progress bar stays
        status = evaluate.main(argv)
    if status:
        raise SystemExit(f"evaluate.py {' '.join(argv)} failed ({status})")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path, help="folder of test images (Kodak: 24)")
    parser.add_argument("--sweeps", default="tiny,hpcm_base", help=f"of {', '.join(SWEEPS)}")
    parser.add_argument("--limit", type=int, help="the first N images only")
    parser.add_argument("--jobs", type=int, default=2, help="N of --jobs N (default: 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each configuration")
    parser.add_argument(
        "--no-threads-row", action="store_true", help="skip the one process of N threads"
    )
    args = parser.parse_args(argv)
    if not args.dataset.is_dir():
        print(f"error: {args.dataset}: no such folder", file=sys.stderr)
        return 1
    names = args.sweeps.split(",")
    if unknown := [name for name in names if name not in SWEEPS]:
        print(f"error: unknown sweep {unknown[0]!r} (known: {', '.join(SWEEPS)})", file=sys.stderr)
        return 1
    configs = {
        "--jobs 1": ["--jobs", "1"],
        f"--jobs {args.jobs}": ["--jobs", str(args.jobs)],
        f"--jobs 1 --threads {args.jobs}": ["--jobs", "1", "--threads", str(args.jobs)],
    }
    if args.no_threads_row:
        del configs[f"--jobs 1 --threads {args.jobs}"]
    images = len(evaluate.list_images(args.dataset, args.limit))
    print(
        f"CPU, {evaluate.default_jobs(torch.device('cpu'))} cores, torch {torch.__version__}; "
        f"{images} images; wall seconds of evaluate.main, median of {args.repeat}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            model_name, count, gains = SWEEPS[name]
            sweep = make_sweep(Path(tmp) / name, model_name, count, gains)
            times: dict[str, list[float]] = {label: [] for label in configs}
            for r in range(args.repeat):
                order = list(configs)[r % len(configs) :] + list(configs)[: r % len(configs)]
                for label in order:
                    out = Path(tmp) / f"{name}-{label.replace(' ', '')}"
                    times[label].append(
                        run_once(sweep, args.dataset, args.limit, configs[label], out)
                    )
            outs = {label: Path(tmp) / f"{name}-{label.replace(' ', '')}" for label in configs}
            reference = results_of(outs["--jobs 1"])
            base = statistics.median(times["--jobs 1"])
            for label, runs in times.items():
                same = results_of(outs[label]) == reference
                wall = statistics.median(runs)
                spread = f"{min(runs):.1f}-{max(runs):.1f}"
                rows.append(
                    (
                        f"{count} {model_name}",
                        label,
                        wall,
                        spread,
                        count * images / wall,
                        base / wall,
                        "yes" if same else "no",
                    )
                )
    print("| sweep | run | wall s | min-max | img/s | speed-up over --jobs 1 | same results |")
    print("|---|---|---|---|---|---|---|")
    for sweep, label, wall, spread, rate, ratio, same in rows:
        print(f"| {sweep} | {label} | {wall:.1f} | {spread} | {rate:.2f} | {ratio:.2f}x | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
