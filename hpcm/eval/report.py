"""BD-rate tables and R-D plots for CompressAI-style evaluation JSON.

Curves are read from JSON files, folders of JSON files, or shipped anchors (``anchor:NAME``, see
``hpcm.eval.anchors``). Every curve is compared with one reference curve using the ``bjontegaard``
package: BD-rate (%, negative = fewer bits for the same quality) and BD-PSNR / BD-MS-SSIM (dB).
Results are printed as a Markdown table and written as Markdown, CSV and an R-D plot (PNG).

Curves of several training seeds (``evaluate.py`` writes one per group and seed) are compared
seed by seed with the reference curve of the same seed; the table then adds each group's mean
with a 95% interval across seeds and a paired bootstrap interval over the test images
(:mod:`hpcm.eval.seeds`), and the plot draws every seed thin and the mean bold.

Run ``python bdrate.py --help`` (or ``python -m hpcm.eval.report --help``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import itertools
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcm.eval import anchors

# bjontegaard (which imports matplotlib.pyplot), matplotlib and hpcm.metrics (torch) are imported
# where they are used, so that `bdrate.py --help` and `--list-anchors` answer at once.

METRICS = {"psnr": "psnr-rgb", "ms-ssim": "ms-ssim-db"}
METRIC_TITLES = {"psnr-rgb": "PSNR", "ms-ssim-db": "MS-SSIM"}
METHODS = ("pchip", "akima", "cubic")
# The classic Bjontegaard cubic fit needs 4 points; pchip and akima are held to the same floor so
# that one table never mixes standards.
MIN_POINTS = 4
# Curves that overlap only partly still get a number, computed over the shared range, with a
# warning below WARN_OVERLAP (the bjontegaard package's own floor: 75% of the joint range).
# Published anchors rarely span the same range (VTM's 8 points reach 3.6 bpp, HPCM's stop at
# 0.82), so a hard floor would leave the most common comparison empty. --min-overlap is the floor.
DEFAULT_MIN_OVERLAP = 0.0
WARN_OVERLAP = 0.75
ANCHOR_PREFIX = "anchor:"
QUALITY_KEYS = ("psnr-rgb", "ms-ssim-rgb", "ms-ssim-db")
# Older CompressAI releases and CompressAI-Trainer write these keys for the same RGB metrics.
KEY_ALIASES = {"psnr": "psnr-rgb", "ms-ssim": "ms-ssim-rgb"}


class ReportError(Exception):
    """A user-facing problem with the inputs; its message is one line."""


@dataclass(frozen=True)
class Curve:
    """One R-D curve: ``results`` holds per-point lists sorted by ``bpp``; ``seed``,
    ``lambdas`` and ``per_image`` (``per_image[key][point][image]``) when the JSON has them."""

    label: str
    source: str
    results: dict[str, list[float]]
    anchor: bool = False
    seed: int | None = None
    lambdas: list[float | None] | None = None
    per_image: dict[str, Any] | None = None

    @property
    def bpp(self) -> list[float]:
        return self.results["bpp"]


def _numbers(values: Any, key: str, source: str) -> list[float]:
    if not isinstance(values, list) or not values:
        raise ReportError(f"{source}: results[{key!r}] must be a non-empty list")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ReportError(f"{source}: results[{key!r}] must hold numbers only")
    if not all(math.isfinite(v) for v in values):
        raise ReportError(f"{source}: results[{key!r}] holds a non-finite value")
    return [float(v) for v in values]


def parse_curve(data: Any, source: str, label: str = "", anchor: bool = False) -> Curve:
    """Validate CompressAI ``eval_model`` JSON and return it as a ``Curve`` sorted by bpp.

    A missing ``ms-ssim-db`` is derived from ``ms-ssim-rgb`` as -10*log10(1 - MS-SSIM); note that
    this is the dB of the averaged MS-SSIM, not the average of per-image dB values.
    """
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ReportError(f"{source}: not an eval JSON (expected an object with 'results')")
    raw = data["results"]
    if "bpp" not in raw:
        raise ReportError(f"{source}: results has no 'bpp' list")
    bpp = _numbers(raw["bpp"], "bpp", source)
    if min(bpp) <= 0:
        raise ReportError(f"{source}: bpp values must be positive")
    results = {"bpp": bpp}
    raw = {KEY_ALIASES.get(k, k): v for k, v in raw.items() if KEY_ALIASES.get(k) not in raw}
    for key in QUALITY_KEYS:
        if key in raw:
            results[key] = _numbers(raw[key], key, source)
            if len(results[key]) != len(bpp):
                raise ReportError(f"{source}: results[{key!r}] and bpp differ in length")
    if "ms-ssim-db" not in results and "ms-ssim-rgb" in results:
        from hpcm.metrics import ms_ssim_db

        if max(results["ms-ssim-rgb"]) >= 1.0:
            raise ReportError(f"{source}: ms-ssim-rgb of 1.0 or more has no dB value")
        results["ms-ssim-db"] = [ms_ssim_db(v) for v in results["ms-ssim-rgb"]]
    order = sorted(range(len(bpp)), key=bpp.__getitem__)
    results = {key: [values[i] for i in order] for key, values in results.items()}
    name = data.get("name")
    label = label or (name if isinstance(name, str) and name else Path(source).stem)
    seed = training_seed(data.get("seed"))
    lambdas = data.get("lambda")
    lambdas = [lambdas[i] for i in order] if _per_point(lambdas, len(bpp)) else None
    per_image = _per_image(data.get("per_image"), order, source)
    return Curve(label, source, results, anchor, seed, lambdas, per_image)


def training_seed(value: Any) -> int | None:
    """``value`` as a training seed: an integer (not a boolean), else None (no seed)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _per_point(values: Any, n: int) -> bool:
    return isinstance(values, list) and len(values) == n


def _per_image(data: Any, order: list[int], source: str) -> dict[str, Any] | None:
    """Per-image values of a curve, points in bpp order; None when absent."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return None
    out: dict[str, Any] = {"images": data["images"]}
    for key, rows in data.items():
        if key == "images":
            continue
        if not _per_point(rows, len(order)) or any(
            not _per_point(row, len(data["images"])) for row in rows
        ):
            raise ReportError(f"{source}: per_image[{key!r}] is not one list per point and image")
        out[key] = [rows[i] for i in order]
    return out


def _load_file(path: Path) -> Curve:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: malformed JSON ({exc.msg}, line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    return parse_curve(data, str(path))


def load_curves(spec: str, metric_key: str | None = None) -> list[Curve]:
    """Curves named by ``spec``: a JSON file, a folder of ``*.json`` files, or ``anchor:NAME``.

    ``metric_key`` lets an anchor name resolve to its MS-SSIM sibling (see ``hpcm.eval.anchors``).
    """
    if spec.startswith(ANCHOR_PREFIX):
        name = spec[len(ANCHOR_PREFIX) :]
        try:
            data = anchors.load_anchor(name, metric_key)
        except KeyError as exc:
            raise ReportError(exc.args[0]) from None
        return [parse_curve(data, spec, label=data["name"], anchor=True)]
    if any(ch in spec for ch in "*?["):  # a glob pattern, e.g. 'EVAL/adam_seed*.json'
        files = sorted(Path(p) for p in glob.glob(spec))  # relative or absolute patterns
        if not files:
            raise ReportError(f"{spec}: no file matches")
        return [_load_file(f) for f in files]
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise ReportError(f"{path}: folder holds no *.json files")
        return [_load_file(f) for f in files]
    if not path.exists():
        raise ReportError(f"{path}: no such file or folder")
    return [_load_file(path)]


def unique_labels(curves: Sequence[Curve]) -> list[Curve]:
    """Relabel curves whose labels collide with their file stem (then an index if needed)."""
    counts = Counter(c.label for c in curves)
    out = [
        dataclasses.replace(c, label=f"{c.label} ({Path(c.source).stem})")
        if counts[c.label] > 1
        else c
        for c in curves
    ]
    counts = Counter(c.label for c in out)
    seen: Counter[str] = Counter()
    result = []
    for c in out:
        seen[c.label] += 1
        if counts[c.label] > 1:
            c = dataclasses.replace(c, label=f"{c.label} #{seen[c.label]}")
        result.append(c)
    return result


@dataclass(frozen=True)
class BDResult:
    """A BD value, or ``None`` with a note that says why it was not computed.

    A value may carry a note too: a warning that it covers only part of the curves' range.
    """

    value: float | None
    note: str = ""

    def cell(self, digits: int) -> str:
        if self.value is None:
            return self.note
        return f"{self.value:+.{digits}f}" + (f" ({self.note})" if self.note else "")


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Shared range of ``a`` and ``b`` as a fraction of their joint range (as bjontegaard does)."""
    joint = max(max(a), max(b)) - min(min(a), min(b))
    shared = min(max(a), max(b)) - max(min(a), min(b))
    return max(shared, 0.0) / joint if joint > 0 else 0.0


def _inside(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a``'s range lies within ``b``'s."""
    return min(b) <= min(a) and max(a) <= max(b)


def _increasing(values: Sequence[float]) -> bool:
    return all(x < y for x, y in itertools.pairwise(values))


def pareto_front(curve: dict[str, list[float]]) -> dict[str, list[float]]:
    """The points of a curve (its first two keys: rate, then quality; any others ride along)
    sorted by rate whose quality exceeds that of every point of lower rate (and, of equal rates,
    the best): the operating points worth choosing."""
    keys = list(curve)
    points = sorted(zip(*(curve[k] for k in keys)), key=lambda p: (p[0], -p[1]))
    front: list[tuple[float, ...]] = []
    for point in points:
        if not front or (point[1] > front[-1][1] and point[0] > front[-1][0]):
            front.append(point)
    return {k: [p[i] for p in front] for i, k in enumerate(keys)}


def _notes(*notes: str) -> str:
    return "; ".join(note for note in notes if note)


def _front(bpp: Sequence[float], quality: Sequence[float]) -> tuple[list[float], list[float]]:
    front = pareto_front({"bpp": list(bpp), "quality": list(quality)})
    return front["bpp"], front["quality"]


def bd_delta(
    kind: str,
    reference: tuple[Sequence[float], Sequence[float]],
    test: tuple[Sequence[float], Sequence[float]],
    method: str = "pchip",
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    min_points: int = MIN_POINTS,
    front: bool = False,
) -> BDResult:
    """BD-rate (``kind="rate"``, %) or BD-metric (``kind="metric"``, dB) of ``test`` vs ``reference``.

    Each curve is ``(bpp, quality)`` sorted by bpp. BD-rate integrates over the shared quality
    range, BD-metric over the shared log-rate range; too little overlap gives a note, not a number.
    ``min_points`` below 4 holds for pchip and akima only (a search's short curves): the cubic
    fit needs 4 whatever it says. ``front``: both curves are first cut to their Pareto fronts
    (:func:`pareto_front`; a curve whose quality does not rise with rate then still has a value,
    from the points worth choosing), and the note says which lost points.
    """
    import bjontegaard as bd

    (ref_bpp, ref_q), (test_bpp, test_q) = reference, test
    cut = []
    if front:
        sizes = len(test_bpp), len(ref_bpp)
        (test_bpp, test_q), (ref_bpp, ref_q) = _front(test_bpp, test_q), _front(ref_bpp, ref_q)
        for name, before, after in zip(("this curve", "reference"), sizes, (test_bpp, ref_bpp)):
            if len(after) < before:
                cut.append(f"front of {name}: {len(after)} of {before} points")
    floor = max(min_points, MIN_POINTS) if method == "cubic" else max(min_points, 2)
    if min(len(ref_bpp), len(test_bpp)) < floor:
        return BDResult(None, _notes(f"n/a: needs >= {floor} points per curve", *cut))
    if not (_increasing(ref_bpp) and _increasing(test_bpp)):
        return BDResult(None, _notes("n/a: repeated bpp values", *cut))
    if not (_increasing(ref_q) and _increasing(test_q)):
        return BDResult(None, _notes("n/a: quality does not rise with rate", *cut))
    if kind == "rate":
        domain, overlap, func = "quality", _overlap(ref_q, test_q), bd.bd_rate
    elif kind == "metric":
        domain, overlap, func = "rate", _overlap(np.log10(ref_bpp), np.log10(test_bpp)), bd.bd_psnr
    else:
        raise ValueError(f"kind must be 'rate' or 'metric', not {kind!r}")
    if overlap == 0:
        return BDResult(None, _notes(f"n/a: {domain} ranges do not overlap", *cut))
    if overlap < min_overlap:
        return BDResult(
            None, _notes(f"n/a: {domain} overlap {overlap:.0%} < {min_overlap:.0%}", *cut)
        )
    value = func(
        ref_bpp, ref_q, test_bpp, test_q, method, require_matching_points=False, min_overlap=0
    )
    warning = ""
    if overlap < WARN_OVERLAP:
        # The share is of the joint range; a curve wholly inside the other's range is still
        # compared over all of its own, which the share alone hides.
        ref_d, test_d = (ref_q, test_q) if kind == "rate" else (ref_bpp, test_bpp)
        whole = ""
        if _inside(test_d, ref_d):
            whole = ", all of this curve's"
        elif _inside(ref_d, test_d):
            whole = ", all of the reference's"
        warning = f"! shared {domain} range only: {overlap:.0%}{whole}"
    return BDResult(float(value), _notes(warning, *cut))


@dataclass(frozen=True)
class Row:
    curve: Curve
    bd_rate: BDResult
    bd_metric: BDResult


def compare(
    curves: Sequence[Curve],
    reference: Curve,
    metric_key: str,
    *,
    method: str = "pchip",
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    min_points: int = MIN_POINTS,
    front: bool = False,
) -> list[Row]:
    """One table row per curve: BD-rate and BD-metric against ``reference`` (the keyword
    options as :func:`bd_delta` takes them)."""
    ref = (reference.bpp, reference.results[metric_key])
    rows = []
    for curve in curves:
        if metric_key not in curve.results:
            missing = BDResult(None, f"n/a: no {metric_key} data")
            rows.append(Row(curve, missing, missing))
            continue
        test = (curve.bpp, curve.results[metric_key])
        rows.append(
            Row(
                curve,
                bd_delta("rate", ref, test, method, min_overlap, min_points, front),
                bd_delta("metric", ref, test, method, min_overlap, min_points, front),
            )
        )
    return rows


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(
    rows: Sequence[Row],
    reference: Curve,
    metric_key: str,
    method: str,
    min_overlap: float,
    scoring: str = "",
) -> str:
    title = METRIC_TITLES[metric_key]
    header = (
        f"Reference: {_md(reference.label)} ({len(reference.bpp)} points); metric {metric_key}; "
        f"method {method}; min overlap {min_overlap:.0%}{scoring}"
    )
    lines = [
        header,
        "",
        f"| curve | points | BD-rate (%) | BD-{title} (dB) |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        label = row.curve.label
        label += " (reference)" if row.curve.source == reference.source else ""
        lines.append(
            f"| {_md(label)} | {len(row.curve.bpp)} | {_md(row.bd_rate.cell(2))} "
            f"| {_md(row.bd_metric.cell(3))} |"
        )
    return "\n".join(lines) + "\n"


def write_csv(
    rows: Sequence[Row], reference: Curve, metric_key: str, method: str, path: Path
) -> None:
    header = ["curve", "source", "points", "reference", "reference_points", "metric", "method"]
    header += ["bd_rate_percent", "bd_metric_db", "note"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            rate, quality = row.bd_rate, row.bd_metric
            notes = [f"BD-rate {rate.note}" if rate.note else ""]
            notes.append(f"BD-metric {quality.note}" if quality.note else "")
            writer.writerow(
                [row.curve.label, row.curve.source, len(row.curve.bpp), reference.label]
                + [len(reference.bpp), metric_key, method]
                + ["" if rate.value is None else repr(rate.value)]
                + ["" if quality.value is None else repr(quality.value)]
                + ["; ".join(n for n in notes if n)]
            )


def plot_curves(curves: Sequence[Curve], reference: Curve, metric_key: str, path: Path) -> None:
    """R-D plot of the reference and all curves, each in its name's colour
    (:func:`~hpcm.eval.plots.curve_colors`); anchors dashed, the reference drawn thicker."""
    from hpcm.eval.plots import curve_colors, rd_figure, save_rd

    fig, ax = rd_figure()
    drawn = [reference, *(c for c in curves if c.source != reference.source)]
    drawn = [curve for curve in drawn if metric_key in curve.results]
    colors = curve_colors(curve.label for curve in drawn)
    for curve in drawn:
        is_ref = curve is reference
        ax.plot(
            curve.bpp,
            curve.results[metric_key],
            color=colors[curve.label],
            linestyle="--" if curve.anchor else "-",
            marker="o",
            markersize=4,
            linewidth=2.2 if is_ref else 1.4,
            label=f"{curve.label} (reference)" if is_ref else curve.label,
        )
    title = METRIC_TITLES[metric_key]
    save_rd(fig, ax, f"{title} (dB)", f"R-D curves, {title}", path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bdrate.py",
        description="BD-rate / BD-PSNR of R-D curves (CompressAI eval JSON) against a reference.",
    )
    parser.add_argument(
        "curves", nargs="*", help="JSON files, folders of JSON files, or anchor:NAME"
    )
    parser.add_argument(
        "--reference",
        "-r",
        help="reference: a JSON file, a folder or glob of one curve per seed, anchor:NAME, or the "
        "name of curves among those given (e.g. -r adam)",
    )
    parser.add_argument("--metric", choices=sorted(METRICS), default="psnr")
    parser.add_argument("--method", choices=METHODS, default="pchip", help="interpolation")
    parser.add_argument(
        "--min-overlap",
        type=float,
        default=DEFAULT_MIN_OVERLAP,
        help="smallest shared fraction of the joint range that still gives a number (default "
        f"{DEFAULT_MIN_OVERLAP}: any overlap; below {WARN_OVERLAP} the cell carries a warning)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="replicates of the paired bootstrap over test images (0: none)",
    )
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument(
        "--front",
        action="store_true",
        help="cut every curve to its Pareto front first (drop a point with more rate and no "
        "more quality than another; in every bootstrap replicate too)",
    )
    parser.add_argument(
        "--min-points",
        type=int,
        default=MIN_POINTS,
        help=f"fewest points a curve (or its front) needs for a value (default {MIN_POINTS}; "
        "pchip and akima go down to 2, cubic needs 4)",
    )
    parser.add_argument("--out", type=Path, default=Path("report"), help="output folder")
    parser.add_argument("--list-anchors", action="store_true", help="list shipped anchors")
    return parser


def list_anchors() -> None:
    for name in anchors.anchor_names():
        data = anchors.load_anchor(name)
        keys = [k for k in data["results"] if k != "bpp"]
        print(f"{name:36s} {len(data['results']['bpp']):2d} points  {', '.join(keys)}")
    print(f"(anchor:<model>/<dataset> picks the {anchors.MSSSIM_SUFFIX} set for --metric ms-ssim)")


def split_reference(
    spec: str, curves: list[Curve], metric_key: str
) -> tuple[list[Curve], list[Curve]]:
    """(reference curves, test curves): ``spec`` loads its own curves, or names curves among
    ``curves`` (e.g. ``adam``), which then leave the test set."""
    named = [c for c in curves if c.label == spec]
    if named and not Path(spec).exists():
        return named, [c for c in curves if c.label != spec]
    refs = load_curves(spec, metric_key)
    sources = {r.source for r in refs}
    return refs, [c for c in curves if c.source not in sources]


def _scoring(args: argparse.Namespace) -> str:
    """What the table header adds for non-default scoring (Pareto fronts, the point floor)."""
    text = "; Pareto fronts" if args.front else ""
    return text + (f"; >= {args.min_points} points" if args.min_points != MIN_POINTS else "")


def run(args: argparse.Namespace) -> None:
    """Load, compare, print and write; raises ``ReportError`` on bad inputs."""
    metric_key = METRICS[args.metric]
    if not 0.0 <= args.min_overlap <= 1.0:
        raise ReportError("--min-overlap must lie in [0, 1]")
    if args.min_points < 2:
        raise ReportError("--min-points must be 2 or more")
    loaded = [c for spec in args.curves for c in load_curves(spec, metric_key)]
    refs, curves = split_reference(args.reference, loaded, metric_key)
    if any(metric_key not in r.results for r in refs):
        raise ReportError(f"{args.reference}: reference has no {metric_key} data")
    for line in usability_warnings([*refs, *curves], refs, metric_key, args.min_overlap):
        print(f"WARNING: {line}", file=sys.stderr)
    stem = args.metric.replace("-", "")
    paths = [args.out / f"bdrate_{stem}.md", args.out / f"bdrate_{stem}.csv"]
    paths.append(args.out / f"rd_{stem}.png")
    seeded = len(refs) > 1 or any(c.seed is not None for c in [*refs, *curves])
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        if seeded:
            table, partial = _run_seeds(args, refs, curves, metric_key, paths)
        else:
            if len(refs) != 1:
                raise ReportError(f"{args.reference}: the reference must be a single curve")
            curves = unique_labels(loaded)  # the reference's own row reads 0 (a check)
            rows = compare(
                curves,
                refs[0],
                metric_key,
                method=args.method,
                min_overlap=args.min_overlap,
                min_points=args.min_points,
                front=args.front,
            )
            table = markdown_table(
                rows, refs[0], metric_key, args.method, args.min_overlap, _scoring(args)
            )
            notes = [r.note for row in rows for r in (row.bd_rate, row.bd_metric)]
            partial = any(note.startswith("!") for note in notes)
            write_csv(rows, refs[0], metric_key, args.method, paths[1])
            plot_curves(curves, refs[0], metric_key, paths[2])
        paths[0].write_text(table, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{args.out}: cannot write report ({exc.strerror or exc})") from None
    print(table, end="")
    if partial:
        print(
            f"warning: cells marked '!' integrate over the shared range of partly overlapping "
            f"curves (< {WARN_OVERLAP:.0%} of the joint range); --min-overlap {WARN_OVERLAP} "
            "turns them into n/a",
            file=sys.stderr,
        )
    print("wrote " + ", ".join(str(p) for p in paths))


def _run_seeds(
    args: argparse.Namespace,
    refs: list[Curve],
    curves: list[Curve],
    metric_key: str,
    paths: list[Path],
) -> tuple[str, bool]:
    """The seed-paired comparison: table, CSV and plot; returns the table and whether a cell
    integrates over a partly shared range only."""
    from hpcm.eval import seeds  # scipy and matplotlib: imported when needed (--help stays fast)
    from hpcm.eval.seed_report import (
        plot_seeds,
        points_by_lambda,
        points_markdown,
        seeds_markdown,
        write_points_csv,
        write_seeds_csv,
    )

    try:
        groups = seeds.pair_by_seed(curves, refs)
    except ValueError as exc:
        raise ReportError(str(exc)) from None

    def bd(kind: str, ref: tuple, test: tuple) -> BDResult:
        return bd_delta(kind, ref, test, args.method, args.min_overlap, args.min_points, args.front)

    rows = seeds.compare_seeds(groups, metric_key, bd, args.bootstrap, args.bootstrap_seed)
    title = METRIC_TITLES[metric_key]
    settings = f"metric {metric_key}; method {args.method}; min overlap {args.min_overlap:.0%}"
    settings += _scoring(args)
    table = seeds_markdown(rows, refs[0].label, title, settings, args.bootstrap)
    write_seeds_csv(rows, refs[0].label, metric_key, args.method, paths[1])
    plot_seeds([*refs, *curves], refs[0].label, metric_key, title, paths[2])
    points = points_by_lambda([*refs, *curves], metric_key)
    stem = paths[0].stem.removeprefix("bdrate_")
    paths += [args.out / f"points_{stem}.md", args.out / f"points_{stem}.csv"]
    paths[3].write_text(points_markdown(points, title), encoding="utf-8")
    write_points_csv(points, metric_key, paths[4])
    return table, any("! shared" in row.note for row in rows)


# Below this quality span a curve cannot say much about a BD difference of a few percent.
MIN_SPAN_DB = 0.5


def usability_warnings(
    curves: Sequence[Curve], references: Sequence[Curve], metric_key: str, min_overlap: float
) -> list[str]:
    """What makes a comparison unusable, each with what to change: quality that does not rise
    with rate (models far from converged), a tiny quality span, no overlap (or less than
    ``min_overlap``) with the curve's reference, chosen as the report pairs them
    (:func:`hpcm.eval.seeds.reference_of`: that of the same seed, or a single one without seed)."""
    from hpcm.eval.seeds import reference_of  # scipy: imported when needed (--help stays fast)

    title = METRIC_TITLES[metric_key]
    out = []
    for curve in curves:
        quality = curve.results.get(metric_key)
        if quality is None:
            continue
        name = curve.label + ("" if curve.seed is None else f" (seed {curve.seed})")
        values = ", ".join(f"{v:.2f}" for v in quality)
        if not _increasing(quality):
            out.append(
                f"{name}: {title} does not rise with rate ({values} dB at increasing bpp): the "
                "models are far from converged; train longer (trainer.epochs, "
                "trainer.max_steps_per_epoch) or start from a trained model (init_from)"
            )
        elif quality[-1] - quality[0] < MIN_SPAN_DB:
            out.append(
                f"{name}: the curve spans only {quality[-1] - quality[0]:.2f} dB of {title}: "
                "widen the lambda range or train longer"
            )
        reference = reference_of(curve.seed, references)
        if reference is None or reference is curve or metric_key not in reference.results:
            continue
        overlap = _overlap(reference.results[metric_key], quality)
        if overlap == 0 or overlap < min_overlap:  # a partial overlap: the '!' cells say so
            out.append(
                f"{name}: shares {overlap:.0%} of its {title} range with {reference.label}: "
                "BD values need curves that reach the same qualities; "
                "choose lambdas so that both optimizers cover the same range"
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_anchors:
        list_anchors()
        return 0
    if not args.curves or not args.reference:
        print("error: give at least one curve and --reference (or --list-anchors)", file=sys.stderr)
        return 2
    try:
        run(args)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
