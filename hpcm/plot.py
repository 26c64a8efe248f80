"""Training curves from ``metrics.jsonl``, without wandb: ``python -m hpcm.plot RUN_DIR...``.

Draws, for every run directory given, the loss, the rate (bpp), the PSNR (train and
validation) and the task weights of balanced runs against the training step, into one figure
(``--out``, default ``RUN_DIR/curves.png`` for one run, ``curves.png`` for several).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcm.eval.plots import agg_figure
from hpcm.run_layout import WEIGHT_PREFIX, RunDirError, read_metrics, series

# Panel title -> the metric names it shows (train and validation).
PANELS = {
    "loss": ("train/loss", "test/loss"),
    "bpp": ("train/bpp_loss", "test/bpp_loss"),
    "PSNR (dB)": ("train/psnr", "test/psnr"),
}


def plot_runs(runs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Four panels (loss, bpp, PSNR, task weights), one line per run and metric."""
    fig = agg_figure((11, 7.5))
    axes = fig.subplots(2, 2).ravel()
    for ax, (title, keys) in zip(axes, PANELS.items(), strict=False):
        for label, records in runs.items():
            for key in keys:
                steps, values = series(records, key)
                style = "o-" if key.startswith("test/") else "-"
                ax.plot(steps, values, style, markersize=3, label=f"{label} {key}")
        ax.set_title(title)
    weights = axes[3]
    for label, records in runs.items():
        names = sorted({k for r in records for k in r if k.startswith(WEIGHT_PREFIX)})
        for key in names:
            weights.plot(*series(records, key), label=f"{label} {key[len(WEIGHT_PREFIX) :]}")
    weights.set_title("applied task weights (balanced runs)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.4)
        if ax.lines:
            ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hpcm.plot", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (or metrics.jsonl)")
    parser.add_argument("--out", type=Path, help="PNG file (default: see above)")
    return parser


def read_runs(paths: Sequence[Path]) -> dict[str, Any]:
    """The records of every run, labelled by run directory (the path where names repeat)."""
    runs: dict[str, Any] = {}
    for run in paths:
        label = run.name if run.is_dir() else run.parent.name
        runs[label if label not in runs else str(run)] = read_metrics(run)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    default = args.runs[0] / "curves.png" if len(args.runs) == 1 else Path("curves.png")
    out = args.out or (default if args.runs[0].is_dir() else Path("curves.png"))
    try:
        plot_runs(read_runs(args.runs), out)
    except RunDirError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
