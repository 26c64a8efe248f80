"""Where every run of a sweep really trained: its ``train/effective_lambda`` against its lambda.

A balancer's model step is, up to a positive factor, the plain step of ``R + lambda_eff * D``
(docs/compare.md, "The effective lambda"); the trainer logs ``lambda_eff`` as
``train/effective_lambda``, and Adam's equals the nominal lambda. This module reads the run
directories of a sweep (``config.yaml`` and ``metrics.jsonl``, as the trainer writes them) and
writes, into ``OUT``:

- ``effective_lambda.csv``: one row per run (optimizer, seed, lambda, the effective lambda and
  the applied task weights averaged over the last ``--tail`` of the logged training steps);
- ``effective_lambda.md``: per optimizer and lambda, the mean over seeds and its range;
- ``effective_lambda.png``: left, the effective lambda against the nominal one (log-log, every
  seed a dot, the mean over seeds a line, the diagonal is Adam's); right, the effective lambda
  along training, one thin line per run.

``python -m hpcm.eval.trade_off SWEEP_DIR... [--out DIR] [--tail 0.2]``; the comparison
(``experiment=compare``) writes it into ``SWEEP/report`` after the BD-rate report. Its
``effective_lambda.csv`` files are inputs too: seeds run on different machines, each reported
into its own folder, are joined from those files alone (the plot then has no training curves for
them).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcm.eval.evaluate import lambda_of, optimizer_of
from hpcm.eval.plots import agg_figure, curve_colors
from hpcm.eval.report import training_seed
from hpcm.run_layout import (
    METRICS_FILE,
    WEIGHT_PREFIX,
    RunDirError,
    read_config,
    read_metrics,
    series,
)

KEY = "train/effective_lambda"
# Gradient diagnostics plotted beside the effective lambda, with their axis label and scale.
DIAGNOSTICS = {
    "train/grad_norm_ratio": ("|g_D| / |g_R|", "log"),
    "train/grad_cosine": ("cos(g_D, g_R)", "linear"),
}
STEM = "effective_lambda"


class TradeOffError(Exception):
    """Nothing to report; the message is one line."""


@dataclass
class RunTradeOff:
    name: str  # the run directory's name
    optimizer: str
    lmbda: float
    seed: int | None
    effective: float  # mean of train/effective_lambda over the tail of training
    steps: list[int] = field(repr=False)
    values: list[float] = field(repr=False)
    weights: dict[str, float] = field(default_factory=dict)  # task -> mean over the tail
    # logged gradient diagnostics: key -> (steps, values)
    diagnostics: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)


def _tail_mean(steps: Sequence[int], values: Sequence[float], tail: float) -> float:
    """Mean of the values logged in the last ``tail`` fraction of the steps."""
    start = steps[-1] - tail * (steps[-1] - steps[0])
    return statistics.fmean(v for s, v in zip(steps, values, strict=True) if s >= start)


def read_run_trade_off(run_dir: Path, tail: float = 0.2) -> RunTradeOff | None:
    """The trade-off of one run directory, or ``None`` if it has no config, lambda or logged
    effective lambda (not a training run, or one that has not logged yet)."""
    config = read_config(run_dir)
    if config is None:
        return None
    lmbda, optimizer = lambda_of(config), optimizer_of(config)
    try:
        records = read_metrics(run_dir)
    except RunDirError:
        return None
    steps, values = series(records, KEY)
    if lmbda is None or optimizer is None or not steps:
        return None
    weights = {}
    for key in sorted({k for r in records for k in r if k.startswith(WEIGHT_PREFIX)}):
        w_steps, w_values = series(records, key)
        if w_steps:
            weights[key[len(WEIGHT_PREFIX) :]] = _tail_mean(w_steps, w_values, tail)
    return RunTradeOff(
        run_dir.name,
        optimizer,
        lmbda,
        training_seed(config.get("seed")),
        _tail_mean(steps, values, tail),
        steps,
        values,
        weights,
        {key: series(records, key) for key in DIAGNOSTICS if series(records, key)[0]},
    )


def read_csv(path: Path) -> list[RunTradeOff]:
    """The runs of an ``effective_lambda.csv`` written by :func:`write_csv` (their means over the
    tail of training, without the logged series)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise TradeOffError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    runs = []
    for line, row in enumerate(rows, start=2):
        try:
            seed = int(row["seed"]) if row["seed"] else None
            weights = {
                key.removeprefix("weight_"): float(value)
                for key, value in row.items()
                if key.startswith("weight_") and value
            }
            lmbda, effective = float(row["lambda"]), float(row["effective_lambda"])
            name = f"{row['optimizer']}_{row['lambda']}_seed{row['seed']}"
            runs.append(
                RunTradeOff(name, row["optimizer"], lmbda, seed, effective, [], [], weights)
            )
        except (KeyError, TypeError, ValueError):
            raise TradeOffError(
                f"{path}, line {line}: not a row of {STEM}.csv (optimizer, seed, lambda, "
                "effective_lambda, weight_*)"
            ) from None
    return runs


def read_sweep(sweep_dirs: Path | Sequence[Path], tail: float = 0.2) -> list[RunTradeOff]:
    """Every run below the sweep directories (any depth) that logged an effective lambda, and
    those of the ``effective_lambda.csv`` files among them, sorted by optimizer, lambda and
    seed."""
    sweep_dirs = [sweep_dirs] if isinstance(sweep_dirs, Path) else list(sweep_dirs)
    runs = []
    for sweep_dir in sweep_dirs:
        if sweep_dir.is_file():
            runs += read_csv(sweep_dir)
            continue
        for metrics in sorted(sweep_dir.rglob(METRICS_FILE)):
            run = read_run_trade_off(metrics.parent, tail)
            if run is not None:
                runs.append(run)
    if not runs:
        names = ", ".join(map(str, sweep_dirs))
        raise TradeOffError(f"{names}: no run with a logged {KEY} and a lambda in its config")
    return sorted(runs, key=lambda r: (r.optimizer, r.lmbda, -1 if r.seed is None else r.seed))


def by_cell(runs: Sequence[RunTradeOff]) -> dict[tuple[str, float], list[RunTradeOff]]:
    """Runs grouped by (optimizer, lambda): the seeds of one cell."""
    cells: dict[tuple[str, float], list[RunTradeOff]] = {}
    for run in runs:
        cells.setdefault((run.optimizer, run.lmbda), []).append(run)
    return cells


def write_csv(runs: Sequence[RunTradeOff], path: Path) -> Path:
    tasks = sorted({t for r in runs for t in r.weights})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["optimizer", "seed", "lambda", "effective_lambda", *(f"weight_{t}" for t in tasks)]
        )
        for r in runs:
            weights = [f"{r.weights[t]:.6g}" if t in r.weights else "" for t in tasks]
            seed = "" if r.seed is None else str(r.seed)
            writer.writerow([r.optimizer, seed, f"{r.lmbda:g}", f"{r.effective:.6g}", *weights])
    return path


def markdown(runs: Sequence[RunTradeOff], tail: float) -> str:
    lines = [
        (
            f"Effective lambda (mean of `{KEY}` over the last {tail:.0%} of training), mean over "
            "seeds [lowest, highest]; the ratio is effective / nominal."
        ),
        "",
        "| optimizer | lambda | seeds | effective lambda | ratio |",
        "|---|---:|---:|---|---:|",
    ]
    for (optimizer, lmbda), members in by_cell(runs).items():
        values = [r.effective for r in members]
        mean = statistics.fmean(values)
        lines.append(
            f"| {optimizer} | {lmbda:g} | {len(values)} | {mean:.3g} "
            f"[{min(values):.3g}, {max(values):.3g}] | {mean / lmbda:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[RunTradeOff], path: Path) -> Path:
    """Left: effective against nominal lambda; right: the effective lambda along training. Each
    optimizer in its colour of every figure (:func:`~hpcm.eval.plots.curve_colors`)."""
    rows = 2 if any(r.diagnostics for r in runs) else 1
    fig = agg_figure((11, 4.6 * rows))
    axes = fig.subplots(rows, 2, squeeze=False)
    left, right = axes[0]
    colors = curve_colors(r.optimizer for r in runs)
    lambdas = sorted({r.lmbda for r in runs})
    left.plot(lambdas, lambdas, "k--", linewidth=0.8, label="effective = nominal")
    cells = by_cell(runs)
    for optimizer, color in colors.items():
        own = [(lm, ms) for (opt, lm), ms in cells.items() if opt == optimizer]
        for _, members in own:
            left.plot([r.lmbda for r in members], [r.effective for r in members], ".", color=color)
        left.plot(
            [lm for lm, _ in own],
            [statistics.fmean(r.effective for r in ms) for _, ms in own],
            "-o",
            color=color,
            markersize=4,
            label=optimizer,
        )
    for r in runs:
        right.plot(r.steps, r.values, color=colors[r.optimizer], linewidth=0.7, alpha=0.6)
    for ax in (left, right):
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    left.set_xscale("log")
    left.set_xlabel("nominal lambda")
    left.set_ylabel("effective lambda (end of training)")
    left.set_title("Where each run trained: dots one seed, line the mean")
    left.legend(fontsize="small")
    right.set_xlabel("step")
    right.set_ylabel("effective lambda")
    along = "one line per run" if any(r.steps for r in runs) else "not in the CSV files read"
    right.set_title(f"Along training: {along}")
    if rows == 2:
        for ax, (key, (label, scale)) in zip(axes[1], DIAGNOSTICS.items(), strict=True):
            for r in runs:
                if key in r.diagnostics:
                    steps, values = r.diagnostics[key]
                    ax.plot(steps, values, color=colors[r.optimizer], linewidth=0.7, alpha=0.6)
            ax.set_yscale(scale)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.set_title(f"Task gradients: {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return path


def write_report(sweep_dirs: Path | Sequence[Path], out: Path, tail: float = 0.2) -> list[Path]:
    """CSV, Markdown and plot of the sweeps' trade-offs into ``out``; returns their paths."""
    return write_runs(read_sweep(sweep_dirs, tail), out, tail)


def write_runs(runs: Sequence[RunTradeOff], out: Path, tail: float) -> list[Path]:
    """CSV, Markdown and plot of runs read by :func:`read_sweep` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{STEM}.md").write_text(markdown(runs, tail))
    return [
        write_csv(runs, out / f"{STEM}.csv"),
        out / f"{STEM}.md",
        plot(runs, out / f"{STEM}.png"),
    ]


def nominal_for(runs: Sequence[RunTradeOff], optimizer: str, targets: Sequence[float]) -> list:
    """For each target effective lambda, the nominal lambda at which ``optimizer`` trains there:
    ``(target, nominal, extrapolated)``, by linear interpolation of log(nominal) in
    log(effective) through the cells' means over seeds (beyond the measured ones, the line
    through the two nearest cells; ``extrapolated`` says so). Needs two cells whose effective
    lambda rises with the nominal one."""
    cells = sorted(
        (lmbda, statistics.fmean(r.effective for r in members))
        for (name, lmbda), members in by_cell(runs).items()
        if name == optimizer
    )
    if len(cells) < 2:
        raise TradeOffError(f"{optimizer}: {len(cells)} lambda(s) measured, the grid needs 2")
    effective = [e for _, e in cells]
    if any(b <= a for a, b in itertools.pairwise(effective)):
        raise TradeOffError(f"{optimizer}: the effective lambda does not rise with the nominal one")
    logs = [(math.log(e), math.log(n)) for n, e in cells]
    grid = []
    for target in targets:
        t = math.log(target)
        i = min(
            max(next((k for k, (e, _) in enumerate(logs) if e >= t), len(logs)), 1), len(logs) - 1
        )
        (e0, n0), (e1, n1) = logs[i - 1], logs[i]
        nominal = math.exp(n0 + (t - e0) * (n1 - n0) / (e1 - e0))
        grid.append((target, nominal, not logs[0][0] <= t <= logs[-1][0]))
    return grid


def _fraction(text: str) -> float:
    value = float(text)
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hpcm.eval.trade_off",
        description="Effective lambda of every run of a sweep against its nominal lambda "
        "(table, CSV and plot).",
    )
    parser.add_argument(
        "sweeps",
        type=Path,
        nargs="+",
        help="sweep directories (runs at any depth below them) or effective_lambda.csv files "
        "this tool wrote (e.g. one per seed)",
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (default: FIRST_SWEEP/report; needed for CSVs)"
    )
    parser.add_argument(
        "--tail", type=_fraction, default=0.2, help="fraction of training to average (0.2)"
    )
    parser.add_argument(
        "--grid",
        nargs=2,
        metavar=("OPTIMIZER", "TARGETS"),
        help="print the nominal lambdas at which OPTIMIZER trains at the effective lambdas "
        "TARGETS (comma-separated), e.g. --grid balanced 0.0018,0.0035,0.0067,0.013",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [str(path) for path in args.sweeps if not path.exists()]
    if missing:
        print(f"error: {', '.join(missing)}: no such sweep directory or file", file=sys.stderr)
        return 1
    if args.out is None and args.sweeps[0].is_file():
        print(f"error: {args.sweeps[0]} is a file: give --out DIR", file=sys.stderr)
        return 1
    try:
        runs = read_sweep(args.sweeps, args.tail)
        paths = write_runs(runs, args.out or args.sweeps[0] / "report", args.tail)
    except TradeOffError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(paths[1].read_text(), end="")
    print(f"written: {', '.join(str(p) for p in paths)}")
    if args.grid:
        optimizer, text = args.grid
        try:
            targets = [float(t) for t in text.split(",")]
            grid = nominal_for(runs, optimizer, targets)
        except ValueError:
            print(f"error: --grid TARGETS must be numbers, got {text!r}", file=sys.stderr)
            return 1
        except TradeOffError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"\nnominal lambdas of {optimizer} for the effective lambdas {text}:")
        for target, nominal, outside in grid:
            note = " (extrapolated beyond the measured lambdas)" if outside else ""
            print(f"  {target:g} -> {nominal:.3g}{note}")
        print(f"grid: [{', '.join(f'{n:.3g}' for _, n, _ in grid)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
