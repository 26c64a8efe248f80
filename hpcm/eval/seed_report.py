"""Tables and plots of seed-paired comparisons (:mod:`hpcm.eval.seeds`): Markdown, CSV and an R-D
plot with every seed drawn thin and each group's mean over seeds drawn bold, and where each curve's
points lie (per lambda, mean and standard deviation over the seeds)."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcm.eval.plots import curve_colors, rd_figure, save_rd
from hpcm.eval.seeds import LEVEL, Interval, SeedRow, mean_curve


def _value(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _interval(interval: Interval | None, digits: int) -> str:
    return "" if interval is None else interval.cell(digits)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def seeds_markdown(
    rows: Sequence[SeedRow], reference: str, title: str, settings: str, replicates: int
) -> str:
    """The table: a row per seed and a bold mean row per group, BD values with both intervals."""
    level = f"{LEVEL:.0%}"
    header = (
        f"Reference: {_escape(reference)} (paired by seed); {settings}; bootstrap: {replicates} "
        "replicates over the test images, paired across curves and seeds"
    )
    columns = (
        f"| curve | seed | points | BD-rate (%) | {level} CI, seeds | {level} CI, images "
        f"| BD-{title} (dB) | {level} CI, seeds | {level} CI, images | note |"
    )
    lines = [header, "", columns, "|---|---|---:|---:|---|---|---:|---|---|---|"]
    for row in rows:
        if row.seed is None:
            label, seed = f"**{_escape(row.label)} mean**", f"{row.seeds} seeds"
            rate = f"**{_value(row.rate, 2)}**"
            metric = f"**{_value(row.metric, 3)}**"
        else:
            label, seed = _escape(row.label), str(row.seed)
            rate, metric = _value(row.rate, 2), _value(row.metric, 3)
        cells = [label, seed, str(row.points), rate, _interval(row.rate_seeds, 2)]
        cells += [_interval(row.rate_images, 2), metric, _interval(row.metric_seeds, 3)]
        cells += [_interval(row.metric_images, 3), _escape(row.note)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_seeds_csv(
    rows: Sequence[SeedRow], reference: str, metric_key: str, method: str, path: Path
) -> None:
    header = ["curve", "seed", "points", "reference", "metric", "method", "bd_rate_percent"]
    header += ["bd_rate_ci_seeds_low", "bd_rate_ci_seeds_high"]
    header += ["bd_rate_ci_images_low", "bd_rate_ci_images_high", "bd_metric_db"]
    header += ["bd_metric_ci_seeds_low", "bd_metric_ci_seeds_high"]
    header += ["bd_metric_ci_images_low", "bd_metric_ci_images_high", "seeds", "note"]

    def cells(interval: Interval | None) -> list[str]:
        return ["", ""] if interval is None else [repr(interval.low), repr(interval.high)]

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            seed = "mean" if row.seed is None else str(row.seed)
            writer.writerow(
                [row.label, seed, row.points, reference, metric_key, method]
                + ["" if row.rate is None else repr(row.rate)]
                + cells(row.rate_seeds)
                + cells(row.rate_images)
                + ["" if row.metric is None else repr(row.metric)]
                + cells(row.metric_seeds)
                + cells(row.metric_images)
                + [row.seeds, row.note]
            )


def plot_seeds(
    curves: Sequence[Any], reference: str, metric_key: str, title: str, path: Path
) -> None:
    """Every curve thin (one line per seed), each group's mean over seeds bold, in the group's
    colour (:func:`~hpcm.eval.plots.curve_colors`); the reference group's mean is labelled as
    such."""
    fig, ax = rd_figure()
    groups: dict[str, list[Any]] = {}
    for curve in curves:
        if metric_key in curve.results:
            groups.setdefault(curve.label, []).append(curve)
    colors = curve_colors(groups)
    for label, members in groups.items():
        color = colors[label]
        for curve in members:
            ax.plot(curve.bpp, curve.results[metric_key], color=color, linewidth=0.8, alpha=0.45)
        mean = mean_curve(members, metric_key)
        if mean is not None:
            name = f"{label} (reference)" if label == reference else label
            seeds = f", mean of {len(members)} seeds" if len(members) > 1 else ""
            ax.plot(*mean, color=color, linewidth=2.4, marker="o", markersize=4, label=name + seeds)
    heading = f"R-D curves, {title}: thin lines one seed each, bold the mean"
    save_rd(fig, ax, f"{title} (dB)", heading, path)


def points_by_lambda(curves: Sequence[Any], metric_key: str) -> list[dict[str, Any]]:
    """Where each group's points lie: one row per curve label and lambda (by point index, in bpp
    order, for curves without lambdas), the seeds' rates and qualities with their mean and
    sample standard deviation (None for one seed). Groups in the order they first appear."""
    # a point's key: (False, its lambda), or (True, its index) without lambdas: sorts lambdas
    # first, each kind by value
    cells: dict[tuple[str, tuple[bool, float]], dict[str, list[float]]] = {}
    for curve in curves:
        quality = curve.results.get(metric_key)
        if quality is None:
            continue
        lambdas = curve.lambdas or [None] * len(curve.bpp)
        keys = [(True, i) if lam is None else (False, lam) for i, lam in enumerate(lambdas)]
        for key, bpp, value in zip(keys, curve.bpp, quality):
            cell = cells.setdefault((curve.label, key), {"seeds": [], "bpp": [], "quality": []})
            cell["seeds"].append(curve.seed)
            cell["bpp"].append(bpp)
            cell["quality"].append(value)
    order: dict[str, int] = {}
    for label, _ in cells:
        order.setdefault(label, len(order))

    rows = []
    for (label, (by_index, key)), cell in sorted(
        cells.items(), key=lambda item: (order[item[0][0]], item[0][1])
    ):
        point = f"point {key}" if by_index else key
        row: dict[str, Any] = {"curve": label, "lambda": point, "seeds": cell["seeds"]}
        for name in ("bpp", "quality"):
            values = cell[name]
            row[name] = values
            row[f"{name}_mean"] = statistics.fmean(values)
            row[f"{name}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return rows


def points_markdown(rows: Sequence[dict[str, Any]], title: str) -> str:
    """The rows of :func:`points_by_lambda` as a Markdown table."""

    def spread(row: dict[str, Any], name: str, digits: int) -> str:
        sd = row[f"{name}_sd"]
        text = f"{row[f'{name}_mean']:.{digits}f}"
        return text if sd is None else f"{text} ± {sd:.{digits}f}"

    lines = [
        f"Points per lambda: mean ± standard deviation over the seeds (bpp, {title} dB)",
        "",
        f"| curve | lambda | seeds | bpp | {title} (dB) |",
        "|---|---:|---:|---|---|",
    ]
    for row in rows:
        key = row["lambda"]
        key = f"{key:g}" if isinstance(key, (int, float)) else key
        lines.append(
            f"| {_escape(row['curve'])} | {key} | {len(row['seeds'])} | {spread(row, 'bpp', 4)} "
            f"| {spread(row, 'quality', 2)} |"
        )
    return "\n".join(lines) + "\n"


def write_points_csv(rows: Sequence[dict[str, Any]], metric_key: str, path: Path) -> None:
    """One line per curve, lambda and seed: where every point lies, for plots of one's own."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["curve", "lambda", "seed", "bpp", metric_key])
        for row in rows:
            for seed, bpp, value in zip(row["seeds"], row["bpp"], row["quality"]):
                seed = "" if seed is None else seed
                writer.writerow([row["curve"], row["lambda"], seed, repr(bpp), repr(value)])
