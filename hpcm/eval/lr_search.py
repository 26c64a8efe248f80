"""Which learning rate each optimizer gets in a comparison: the runs of a learning-rate search
(``experiment=factorial_lr_cpu``), scored alike.

Every run of the search trained one optimizer at one learning rate toward one target trade-off
``lambda_t`` and validated at its end on a selection set (not the test set). A fixed-lambda
optimizer trains at ``lambda_t`` itself; an adaptive one (FAMO) at the nominal lambda whose
effective lambda is ``lambda_t`` (the comparison's lambda grids, docs/compare.md). Every run is
scored by the same validation loss at the target, whatever its nominal lambda:

    J = bpp + lambda_t * 255^2 * MSE = test/bpp_loss + (lambda_t / lambda) * test/distortion

(``test/distortion`` is ``lambda * 255^2 * MSE`` of the run's own lambda), the mean over the
seeds of a cell. Each optimizer gets the learning rate of its lowest J among the learning
rates that trained without diverging; one at the edge of the searched values is flagged, since
the optimum may lie outside them.

A learning rate that is best at ``lambda_t`` may still diverge elsewhere on the comparison's
lambda grid (docs/compare.md: balanced at 8e-3 did at nominal 0.001). Runs of the candidate
learning rates at the grid's extremes, given as check sweeps (``--check DIR``), are not scored:
each is judged by its training curve (:func:`divergence`), and a learning rate that diverged in
any of them is excluded, so the choice is the best J among the learning rates that train the
whole grid.

``python -m hpcm.eval.lr_search SWEEP_DIR [--check DIR ...] [--target LAMBDA] [--out DIR]``
writes ``lr_search.csv`` (one row per run), ``lr_search.md`` (J per optimizer and lr, the
checks, the choice), ``lr_search.json`` (``{optimizer: lr}``, the excluded lrs) and
``lr_search.png`` (J against lr); the search preset runs it at the end of its sweep
(:class:`LrSearchReport`).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from hpcm.eval.evaluate import lambda_of, optimizer_of
from hpcm.eval.plots import curve_colors, rd_figure
from hpcm.eval.report import training_seed
from hpcm.run_layout import (
    METRICS_FILE,
    RunDirError,
    last_validation_record,
    read_config,
    read_metrics,
    series,
)

log = logging.getLogger(__name__)

STEM = "lr_search"
TARGET_KEY = ("lr_search", "target_lambda")  # where the search preset records lambda_t


DIVERGENCE_RATIO = 2.0  # a training-loss window this many times the lowest earlier one


class LrSearchError(Exception):
    """Nothing to score; the message is one line."""


@dataclass
class ScoredRun:
    name: str  # the run directory's name
    optimizer: str
    lr: float
    seed: int | None
    lmbda: float  # the run's nominal lambda
    bpp: float  # test/bpp_loss of the last validation
    mse: float  # 255^2 MSE, from test/distortion / lambda
    step: int  # the step of that validation
    diverged: str | None = None  # why the run counts as diverged (:func:`divergence`)
    where: str = ""  # the folder it was read from (its name) and the path below it

    def score(self, target: float) -> float:
        """``J = bpp + lambda_t * 255^2 * MSE`` at the target trade-off ``lambda_t``."""
        return self.bpp + target * self.mse


def divergence(records: Sequence[dict[str, Any]]) -> str | None:
    """Why a run's training diverged, or None: a non-finite training or validation loss, or a
    mean training loss over a window of a tenth of the logged steps more than
    ``DIVERGENCE_RATIO`` times the lowest earlier window's (a loss that fell and then rose; on
    the factorial's pilot runs that trained, the largest such ratio is 1.10; balanced at lr
    8e-3 and nominal 0.001, which diverged, reaches 131)."""
    for record in records:
        for key in ("train/loss", "test/loss"):
            value = record.get(key)  # the trainer writes a non-finite value as a string
            if isinstance(value, str) or (isinstance(value, float) and not math.isfinite(value)):
                return f"non-finite {key} at step {record.get('step')}"
    steps, losses = series(records, "train/loss")  # after a resume, a step's latest value
    width = max(1, len(steps) // 10)
    lowest = math.inf
    for start in range(len(steps) - width + 1):
        mean = statistics.fmean(losses[start : start + width])
        if mean > DIVERGENCE_RATIO * lowest:
            return (
                f"training loss {mean:.3g} around step {steps[start + width - 1]}, "
                f"{mean / lowest:.1f}x its lowest {lowest:.3g}"
            )
        lowest = min(lowest, mean)
    return None


def read_run(run_dir: Path) -> tuple[ScoredRun, float | None] | None:
    """The scored run of ``run_dir`` and the target lambda its config records, or ``None`` for a
    directory that is not a finished, validated training run."""
    config = read_config(run_dir)
    if config is None:
        return None
    optimizer, lmbda = optimizer_of(config), lambda_of(config)
    lr = (config.get("optimizer") or {}).get("lr")
    try:
        records = read_metrics(run_dir)
    except RunDirError:
        return None
    last = last_validation_record(records)
    if optimizer is None or not lmbda or not isinstance(lr, (int, float)) or last is None:
        return None
    target = config.get(TARGET_KEY[0], {}) or {}
    target = target.get(TARGET_KEY[1]) if isinstance(target, dict) else None
    mse = float(last["test/distortion"]) / lmbda
    run = ScoredRun(
        run_dir.name,
        optimizer,
        float(lr),
        training_seed(config.get("seed")),
        lmbda,
        float(last["test/bpp_loss"]),
        mse,
        int(last["step"]),
        divergence(records),
    )
    return run, (float(target) if isinstance(target, (int, float)) else None)


def read_runs(sweep_dir: Path) -> list[tuple[ScoredRun, float | None]]:
    """Every validated run below ``sweep_dir`` with the target lambda its config records."""
    runs = []
    for metrics in sorted(sweep_dir.rglob(METRICS_FILE)):
        found = read_run(metrics.parent)
        if found is not None:  # the same run may lie in two folders (a sweep, a copy of it)
            found[0].where = (
                Path(sweep_dir.resolve().name) / metrics.parent.relative_to(sweep_dir)
            ).as_posix()
            runs.append(found)
    return runs


def read_search(sweep_dir: Path, target: float | None = None) -> tuple[list[ScoredRun], float]:
    """The validated runs below ``sweep_dir`` and the target lambda (``target``, else the one
    the runs' configs record, which must agree)."""
    found = read_runs(sweep_dir)
    runs = [run for run, _ in found]
    targets = {recorded for _, recorded in found if recorded is not None}
    if not runs:
        raise LrSearchError(f"{sweep_dir}: no validated training run below it")
    if target is None:
        if len(targets) != 1:
            recorded = ", ".join(map(str, sorted(targets))) or "none"
            raise LrSearchError(
                f"{sweep_dir}: the runs record target lambdas {recorded}; give --target LAMBDA"
            )
        target = targets.pop()
    return sorted(runs, key=lambda r: (r.optimizer, r.lr, r.seed or 0)), target


def table(runs: Sequence[ScoredRun], target: float) -> dict[str, dict[float, list[float]]]:
    """``{optimizer: {lr: [J of each seed]}}``."""
    cells: dict[str, dict[float, list[float]]] = {}
    for run in runs:
        cells.setdefault(run.optimizer, {}).setdefault(run.lr, []).append(run.score(target))
    return cells


Exclusions = dict[str, dict[float, str]]  # {optimizer: {lr: why it is excluded}}


def exclusions(runs: Sequence[ScoredRun], checks: Sequence[ScoredRun] = ()) -> Exclusions:
    """The learning rates that diverged, per optimizer: in a scored run, or in a check run (at
    any lambda; :func:`read_checks` keeps those of a scored optimizer and lr)."""
    excluded: Exclusions = {}
    for run in [*runs, *checks]:
        if run.diverged:
            reasons = excluded.setdefault(run.optimizer, {})
            reasons.setdefault(run.lr, f"diverged at lambda {run.lmbda:g}: {run.diverged}")
    return excluded


def choose(
    cells: dict[str, dict[float, list[float]]], excluded: Exclusions | None = None
) -> dict[str, tuple[float, bool]]:
    """Per optimizer the lr of the lowest mean J (ties: the smaller lr) among those not
    ``excluded``, and whether it lies at an edge of the searched values with no excluded lr
    beyond it (True when more than one value was searched): the optimum may lie outside."""
    chosen = {}
    for optimizer, by_lr in cells.items():
        out = (excluded or {}).get(optimizer, {})
        finite = {
            lr: statistics.fmean(j)
            for lr, j in by_lr.items()
            if lr not in out and all(map(math.isfinite, j))
        }
        if not finite:
            continue
        best = min(sorted(finite), key=lambda lr: finite[lr])
        lrs = sorted(by_lr)
        edge = len(lrs) > 1 and (
            (best == min(finite) and not any(lr < best for lr in out))
            or (best == max(finite) and not any(lr > best for lr in out))
        )
        chosen[optimizer] = (best, edge)
    return chosen


def markdown(
    cells: dict[str, dict[float, list[float]]],
    chosen: dict[str, tuple[float, bool]],
    target: float,
    excluded: Exclusions | None = None,
    checks: Sequence[ScoredRun] = (),
) -> str:
    lrs = sorted({lr for by_lr in cells.values() for lr in by_lr})
    head = "| optimizer | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | chosen |"
    lines = [
        f"Validation J = bpp + {target:g} * 255^2 * MSE (mean over seeds; lower is better)",
        "",
        head,
        "|---|" + "---:|" * len(lrs) + "---|",
    ]
    for optimizer, by_lr in sorted(cells.items()):
        best = chosen.get(optimizer)
        row = []
        for lr in lrs:
            values = by_lr.get(lr)
            text = "" if values is None else f"{statistics.fmean(values):.4f}"
            if values is not None and len(values) > 1:
                text += f" ({len(values)} seeds)"
            if values is not None and lr in (excluded or {}).get(optimizer, {}):
                text += " (excluded)"
            row.append(f"**{text}**" if best and best[0] == lr else text)
        note = "none (no finite J)" if best is None else f"{best[0]:g}"
        if best and best[1]:
            note += " (at the edge of the searched values: widen them)"
        if best and checks:
            at = sorted({c.lmbda for c in checks if (c.optimizer, c.lr) == (optimizer, best[0])})
            note += f" (checked at {', '.join(f'{x:g}' for x in at)})" if at else " (unchecked)"
        lines.append(f"| {optimizer} | " + " | ".join(row) + f" | {note} |")
    for optimizer, reasons in sorted((excluded or {}).items()):
        for lr, reason in sorted(reasons.items()):
            lines.append(f"\n{optimizer} at lr {lr:g} is excluded: {reason}")
    if checks:
        lines += [
            "",
            "Checks (not scored): each run's end, trained at its own lambda",
            "",
            "| optimizer | lr | lambda | seed | bpp | 255^2 MSE | diverged | run |",
            "|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for c in checks:
            lines.append(
                f"| {c.optimizer} | {c.lr:g} | {c.lmbda:g} | {c.seed} | {c.bpp:.4f} | "
                f"{c.mse:.1f} | {c.diverged or 'no'} | {c.where} |"
            )
    return "\n".join(lines) + "\n"


def read_checks(check_dirs: Sequence[Path], runs: Sequence[ScoredRun]) -> list[ScoredRun]:
    """The finished runs below ``check_dirs`` of an optimizer and lr that the search scored."""
    scored = {(run.optimizer, run.lr) for run in runs}
    checks = []
    for check_dir in check_dirs:
        if not check_dir.is_dir():
            raise LrSearchError(f"{check_dir}: no such check directory")
        found = [run for run, _ in read_runs(check_dir) if (run.optimizer, run.lr) in scored]
        if not found:
            raise LrSearchError(f"{check_dir}: no validated run of a searched optimizer and lr")
        checks += found
    return sorted(checks, key=lambda r: (r.optimizer, r.lr, r.lmbda, r.seed or 0, r.where))


def write_report(
    sweep_dir: Path,
    out: Path,
    target: float | None = None,
    check_dirs: Sequence[Path] = (),
) -> list[Path]:
    """CSV, Markdown, JSON and plot of the search in ``sweep_dir`` (and the divergence checks
    below ``check_dirs``) into ``out``."""
    runs, target = read_search(sweep_dir, target)
    checks = read_checks(check_dirs, runs)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{STEM}.{ext}" for ext in ("csv", "md", "json", "png")]
    with paths[0].open("w", newline="") as f:
        writer = csv.writer(f)
        header = ["run", "optimizer", "lr", "seed", "lambda", "step", "bpp", "mse", "J", "diverged"]
        writer.writerow(header)
        for r in runs:
            j = r.score(target)
            row = [r.name, r.optimizer, r.lr, r.seed, r.lmbda, r.step, r.bpp, r.mse, j]
            writer.writerow([*row, r.diverged or ""])
    cells = table(runs, target)
    excluded = exclusions(runs, checks)
    chosen = choose(cells, excluded)
    paths[1].write_text(markdown(cells, chosen, target, excluded, checks))
    paths[2].write_text(
        json.dumps(
            {
                "target_lambda": target,
                "lr": {name: lr for name, (lr, _) in sorted(chosen.items())},
                "at_edge": sorted(name for name, (_, edge) in chosen.items() if edge),
                "excluded": {
                    name: {f"{lr:g}": why for lr, why in sorted(reasons.items())}
                    for name, reasons in sorted(excluded.items())
                },
            },
            indent=1,
        )
        + "\n"
    )
    plot(cells, target, paths[3])
    return paths


def plot(cells: dict[str, dict[float, list[float]]], target: float, path: Path) -> Path:
    """J against the learning rate (log x), one line per optimizer through the seed means, every
    seed a dot."""
    colors = curve_colors(sorted(cells))
    fig, ax = rd_figure((6.4, 4.4))
    for optimizer, by_lr in sorted(cells.items()):
        lrs = sorted(by_lr)
        color = colors[optimizer]
        for lr in lrs:
            ax.scatter([lr] * len(by_lr[lr]), by_lr[lr], s=12, color=color, alpha=0.5)
        ax.plot(
            lrs, [statistics.fmean(by_lr[lr]) for lr in lrs], "-o", color=color, label=optimizer
        )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (optimizer.lr)")
    ax.set_ylabel(f"validation bpp + {target:g} * 255^2 MSE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


class LrSearchReport(Callback):
    """``on_multirun_end``: the search's report into ``SWEEP/report``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            paths = write_report(sweep_dir, sweep_dir / "report")
        except LrSearchError as error:
            log.error("no learning-rate report: %s", error)
            return
        log.info("learning-rate search:\n%s", paths[1].read_text())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hpcm.eval.lr_search",
        description="Score the runs of a learning-rate search at one target lambda and choose "
        "each optimizer's learning rate.",
    )
    parser.add_argument("sweep", type=Path, help="the search's sweep directory")
    parser.add_argument(
        "--check",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a sweep of the candidate lrs at other lambdas (the grid's extremes): not scored; "
        "an lr that diverged in it is excluded (repeatable)",
    )
    parser.add_argument(
        "--target", type=float, help="target lambda (default: the one the runs' configs record)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: SWEEP/report)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.sweep.is_dir():
        print(f"error: {args.sweep}: no such sweep directory", file=sys.stderr)
        return 1
    try:
        paths = write_report(args.sweep, args.out or args.sweep / "report", args.target, args.check)
    except LrSearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(paths[1].read_text(), end="")
    print(f"written: {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
