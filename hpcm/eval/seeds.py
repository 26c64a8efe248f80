"""Comparisons across training seeds: curves paired by seed, BD values per seed, their mean with a
95% interval across seeds, and a paired bootstrap over the test images.

Why both intervals: the seeds' interval says how much the answer moves with the training run
(initialisation, noise, data order); the bootstrap says how much it moves with the choice of test
images. BD-rate from few R-D points is fragile (Herglotz et al., "Rethinking Bjontegaard Delta
for Compression Efficiency Evaluation", 2024), so a difference is only worth reporting with both.

The bootstrap is paired: one replicate draws image indices with replacement once and recomputes
every curve of the comparison (test and reference, every seed) on those images, then the BD
values and their mean over seeds; the interval is the 2.5 and 97.5 percentiles over replicates
(Efron and Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13).

This module only needs curves with ``label``, ``seed``, ``bpp``, ``results``, ``lambdas`` and
``per_image`` and a BD function; :mod:`hpcm.eval.report` supplies both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

# bd(kind, (ref_bpp, ref_quality), (test_bpp, test_quality)) -> object with .value (None: n/a)
BDFunction = Callable[[str, tuple, tuple], Any]
LEVEL = 0.95


@dataclass(frozen=True)
class Pair:
    seed: int | None
    test: Any
    reference: Any


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def cell(self, digits: int) -> str:
        return f"[{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


@dataclass(frozen=True)
class SeedRow:
    """One line of the table: a seed (``seed`` set) or the mean of a group (``seed`` None)."""

    label: str
    seed: int | None
    points: int
    rate: float | None
    metric: float | None
    note: str = ""
    rate_seeds: Interval | None = None
    metric_seeds: Interval | None = None
    rate_images: Interval | None = None
    metric_images: Interval | None = None
    seeds: int = 1


def reference_of(seed: int | None, references: Sequence[Any]) -> Any | None:
    """The reference curve that a curve of training seed ``seed`` is compared with: a single
    reference without a seed (an anchor, one run) serves every seed, any other reference only its
    own seed; None when no reference fits. The one rule of the report's pairs and its warnings."""
    if len(references) == 1 and references[0].seed is None:
        return references[0]
    return next((r for r in references if r.seed == seed), None)


def pair_by_seed(tests: Sequence[Any], references: Sequence[Any]) -> dict[str, list[Pair]]:
    """Test curves grouped by label, each paired with its reference (:func:`reference_of`).
    ``ValueError`` when a seed has no reference curve or a group repeats a seed."""
    by_seed = {r.seed: r for r in references}
    if len(by_seed) != len(references):
        raise ValueError("the reference curves repeat a seed")
    groups: dict[str, list[Pair]] = {}
    for curve in tests:
        reference = reference_of(curve.seed, references)
        if reference is None:
            have = ", ".join(str(s) for s in sorted(by_seed, key=str))
            raise ValueError(f"{curve.label}: no reference curve of seed {curve.seed} ({have})")
        pairs = groups.setdefault(curve.label, [])
        if any(p.seed == curve.seed for p in pairs):
            raise ValueError(f"{curve.label}: two curves of seed {curve.seed}")
        pairs.append(Pair(curve.seed, curve, reference))
    for pairs in groups.values():
        pairs.sort(key=lambda p: (p.seed is None, p.seed))
    return groups


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval | None:
    """Student-t interval of the mean of ``values`` (None for fewer than two values)."""
    n = len(values)
    if n < 2:
        return None
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean - half, mean + half)


def _images(curve: Any, metric_key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(bpp, quality) per point and image of a curve, or None without per-image values."""
    per_image = curve.per_image or {}
    if "bpp" not in per_image or metric_key not in per_image:
        return None
    return np.asarray(per_image["bpp"], float), np.asarray(per_image[metric_key], float)


def _resampled(data: tuple[np.ndarray, np.ndarray], idx: np.ndarray) -> tuple[list, list]:
    bpp, quality = data[0][:, idx].mean(1), data[1][:, idx].mean(1)
    order = np.argsort(bpp)
    return bpp[order].tolist(), quality[order].tolist()


def bootstrap(
    pairs: Sequence[Pair],
    metric_key: str,
    bd: BDFunction,
    replicates: int,
    seed: int = 0,
) -> tuple[list[tuple[Interval, Interval] | None], tuple[Interval, Interval] | None, str]:
    """Paired bootstrap over test images: per-seed intervals, the interval of the seeds' mean,
    and a note (why it was not computed, or how many replicates gave no BD value)."""
    curves = [c for p in pairs for c in (p.test, p.reference)]
    data = [_images(c, metric_key) for c in curves]
    if replicates < 1 or any(d is None for d in data):
        return [None] * len(pairs), None, "" if replicates < 1 else "no per-image values"
    names = {tuple(c.per_image.get("images", ())) for c in curves}
    if len(names) != 1:
        return [None] * len(pairs), None, "curves measured on different images"
    n_images = data[0][0].shape[1]
    rng = np.random.default_rng(seed)
    draws = np.full((replicates, len(pairs), 2), np.nan)
    for b in range(replicates):
        idx = rng.integers(0, n_images, n_images)
        for i in range(len(pairs)):
            test, ref = _resampled(data[2 * i], idx), _resampled(data[2 * i + 1], idx)
            for j, kind in enumerate(("rate", "metric")):
                value = bd(kind, ref, test).value
                draws[b, i, j] = math.nan if value is None else value
    per_seed = [_percentiles(draws[:, i, :]) for i in range(len(pairs))]
    means = draws.mean(1)  # NaN where any seed gave no value in that replicate
    failed = int(np.isnan(means).any(1).sum())
    note = f"{failed} of {replicates} replicates without a BD value" if failed else ""
    return per_seed, _percentiles(means), note


def _percentiles(values: np.ndarray) -> tuple[Interval, Interval] | None:
    kept = values[~np.isnan(values).any(1)]
    if len(kept) < 2:
        return None
    low, high = np.percentile(kept, [50 * (1 - LEVEL), 50 * (1 + LEVEL)], axis=0)
    return Interval(float(low[0]), float(high[0])), Interval(float(low[1]), float(high[1]))


def compare_seeds(
    groups: dict[str, list[Pair]],
    metric_key: str,
    bd: BDFunction,
    replicates: int,
    seed: int = 0,
) -> list[SeedRow]:
    """Rows of every group: one per seed (with its bootstrap interval), then the mean over the
    seeds with the interval across seeds and the bootstrap interval of the mean."""
    rows = []
    for label, pairs in groups.items():
        per_seed, mean_images, boot_note = bootstrap(pairs, metric_key, bd, replicates, seed)
        values = []
        for pair, images in zip(pairs, per_seed, strict=True):
            ref = (pair.reference.bpp, pair.reference.results[metric_key])
            test = (pair.test.bpp, pair.test.results[metric_key])
            rate, metric = bd("rate", ref, test), bd("metric", ref, test)
            values.append((rate.value, metric.value))
            # the two cells share the notes about the curves themselves (a front's cut): once
            parts = (part for n in (rate.note, metric.note) if n for part in n.split("; "))
            note = "; ".join(dict.fromkeys(parts))
            row = SeedRow(label, pair.seed, len(pair.test.bpp), *values[-1], note)
            rows.append(_with_images(row, images))
        if any(v is None for pair_values in values for v in pair_values):
            missing = sum(None in pair_values for pair_values in values)
            note = f"n/a: {missing} of {len(pairs)} seeds have no BD value"
            rows.append(SeedRow(label, None, 0, None, None, note, seeds=len(pairs)))
            continue
        rates, metrics = [v[0] for v in values], [v[1] for v in values]
        mean = SeedRow(
            label,
            None,
            len(pairs[0].test.bpp),
            float(np.mean(rates)),
            float(np.mean(metrics)),
            boot_note,
            t_interval(rates),
            t_interval(metrics),
            seeds=len(pairs),
        )
        rows.append(_with_images(mean, mean_images))
    return rows


def _with_images(row: SeedRow, images: tuple[Interval, Interval] | None) -> SeedRow:
    if images is None:
        return row
    return replace(row, rate_images=images[0], metric_images=images[1])


def mean_curve(curves: Sequence[Any], metric_key: str) -> tuple[list[float], list[float]] | None:
    """Mean (bpp, quality) over seeds, point by point (matched by lambda when every curve has
    one lambda per point, else by rank); None when the curves have different point counts."""
    if len({len(c.bpp) for c in curves}) != 1:
        return None

    def order(c: Any) -> list[int]:
        lambdas = c.lambdas
        if lambdas and all(v is not None for v in lambdas):
            return sorted(range(len(lambdas)), key=lambdas.__getitem__)
        return list(range(len(c.bpp)))

    bpp = np.mean([[c.bpp[i] for i in order(c)] for c in curves], axis=0)
    quality = np.mean([[c.results[metric_key][i] for i in order(c)] for c in curves], axis=0)
    rank = np.argsort(bpp)
    return bpp[rank].tolist(), quality[rank].tolist()
