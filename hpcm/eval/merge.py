"""Join the points of one curve evaluated in parts into one curve file.

A curve extended later by more lambdas (runs trained after the first evaluation, or on another
machine) is evaluated on the new runs alone and joined to the first file, without the first
runs' checkpoints::

    python -m hpcm.eval.merge OLD.json NEW.json [MORE.json ...] -o MERGED.json

The parts must be ``evaluate.py`` curves of the same name and training seed, measured the same
way (``Inference (ans)`` or ``(entropy estimation)``) on the same images, and share no lambda.
The result is one CompressAI eval JSON as ``evaluate.py`` writes it: every list sorted by bpp,
the per-image values (the bootstraps over images need them) kept in the same order.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpcm.files import atomic_write

# The start of evaluate.py's description: how the rate was measured.
_METHOD = re.compile(r"^Inference \(([^)]*)\)")


class MergeError(Exception):
    """The parts cannot form one curve; the message is one line."""


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MergeError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise MergeError(f"{path}: not a JSON curve ({exc})") from None
    missing = [k for k in ("name", "results", "lambda", "per_image") if k not in data]
    if missing or "bpp" not in data.get("results", {}):
        raise MergeError(
            f"{path}: not an evaluate.py curve (missing {', '.join(missing) or 'results.bpp'})"
        )
    return data


def _method(data: dict[str, Any]) -> str:
    match = _METHOD.match(data.get("description", ""))
    return match.group(1) if match else ""


def _image_difference(ours: list[str], theirs: list[str]) -> str:
    pairs = [(a, b) for a, b in zip(ours, theirs) if a != b]
    where = f"{pairs[0][1]} where it has {pairs[0][0]}" if pairs else "a longer list"
    return f"{len(theirs)} vs {len(ours)} images; {where}"


def _same(
    parts: Sequence[tuple[Path, dict]],
    what: str,
    value: Callable[[dict], Any],
    detail: Callable[[Any, Any], str] | None = None,
) -> None:
    """Refuses a part whose ``value`` differs from the first part's, in one line: both values,
    or ``detail(first's, its)`` for values too long to print."""
    first_path, first = parts[0]
    ours = value(first)
    for path, data in parts[1:]:
        theirs = value(data)
        if theirs == ours:
            continue
        if detail is None:
            raise MergeError(f"{path}: {what} {theirs!r} differs from {first_path}'s {ours!r}")
        raise MergeError(f"{path}: {what} than {first_path}'s ({detail(ours, theirs)})")


def merge_curves(parts: Sequence[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """One curve from the points of ``parts`` (``(path, curve)`` pairs), sorted by bpp."""
    if len(parts) < 2:
        raise MergeError("give at least two curve files")
    _same(parts, "name", lambda d: d["name"])
    _same(parts, "seed", lambda d: d.get("seed"))
    _same(parts, "rate measurement", _method)
    _same(
        parts, "other test images", lambda d: d["per_image"].get("images") or [], _image_difference
    )
    first = parts[0][1]
    keys = [k for k in first["results"] if all(k in d["results"] for _, d in parts)]
    image_keys = [
        k
        for k in first["per_image"]
        if k != "images" and all(k in d["per_image"] for _, d in parts)
    ]
    points = []  # (bpp, lambda, checkpoint, {key: value}, {key: per-image values})
    for _, data in parts:
        n = len(data["results"]["bpp"])
        checkpoints = data.get("checkpoints") or [None] * n
        for i in range(n):
            points.append(
                (
                    data["results"]["bpp"][i],
                    data["lambda"][i],
                    checkpoints[i],
                    {k: data["results"][k][i] for k in keys},
                    {k: data["per_image"][k][i] for k in image_keys},
                )
            )
    lambdas = [p[1] for p in points if p[1] is not None]
    repeated = sorted({x for x in lambdas if lambdas.count(x) > 1})
    if repeated:
        raise MergeError(
            f"lambda {', '.join(f'{x:g}' for x in repeated)} is in more than one part "
            "(a point evaluated twice?)"
        )
    points.sort(key=lambda p: p[0])
    descriptions = list(dict.fromkeys(d.get("description", "") for _, d in parts))
    return {
        "name": first["name"],
        "description": " + ".join(descriptions),
        "seed": first.get("seed"),
        "results": {k: [p[3][k] for p in points] for k in keys},
        "checkpoints": [p[2] for p in points],
        "lambda": [p[1] for p in points],
        "per_image": {
            "images": first["per_image"].get("images"),
            **{k: [p[4][k] for p in points] for k in image_keys},
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hpcm.eval.merge", description=__doc__.split("\n")[0]
    )
    parser.add_argument("parts", nargs="+", type=Path, help="curve files (evaluate.py's JSON)")
    parser.add_argument("--out", "-o", type=Path, required=True, help="merged curve file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        merged = merge_curves([(path, _load(path)) for path in args.parts])
    except MergeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, (json.dumps(merged, indent=2) + "\n").encode())
    bpp, lambdas = merged["results"]["bpp"], merged["lambda"]
    print(f"{args.out}: {merged['name']} (seed {merged['seed']}), {len(bpp)} points")
    for b, q, lmbda in zip(bpp, merged["results"].get("psnr-rgb", [None] * len(bpp)), lambdas):
        psnr = "" if q is None else f"  {q:.3f} dB PSNR"
        print(f"  lambda {lmbda if lmbda is not None else '?'}  {b:.4f} bpp{psnr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
