"""Issue 19's readings in one table, from the CSV files make.sh writes (run by make.sh last):

    python docs/results/readings/summary.py      (from the repository root)

Each row: the question, the reading, every seed's BD-rate, the mean over the seeds with its 95%
Student-t interval across the seeds and its 95% paired bootstrap over the images, and what the
seeds' interval answers (below 0: the first arm needs fewer bits; above 0: more; across 0: no
answer at this scale). The same for the readings on the curves' Pareto fronts. Written to
docs/results/readings/summary.md; nothing is computed here that the CSV files do not hold.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
READINGS = [  # (question, reading folder)
    ("cautious Adam better than Adam at a tuned lr?", "adam_cautious_vs_adam"),
    ("FAMO better than a fixed lambda (Adam base)?", "famo_adam_vs_adam"),
    ("FAMO better than a fixed lambda (cautious base)?", "balanced_vs_adam_cautious"),
    ("FAMO better than its own schedule (Adam base)?", "famo_adam_vs_replay"),
    ("FAMO better than its own schedule (cautious base)?", "balanced_vs_replay"),
    ("Balanced R-D against Adam (both changes)", "balanced_vs_adam"),
    ("the study's best setting against Adam", "tuned_vs_adam"),
    ("the study's best setting against cautious Adam", "tuned_vs_adam_cautious"),
    ("the study's best setting against the reference's defaults", "tuned_vs_balanced"),
    ("QP fine-tuning against continuing with Adam", "qp_vs_adam_continued"),
    ("QP fine-tuning against continuing with cautious Adam", "qp_vs_adam_cautious_continued"),
    ("continuing with cautious Adam against Adam", "adam_cautious_vs_adam_continued"),
]
RANGE = re.compile(r"shared quality range only: (\d+)%")


def _number(text: str) -> float | None:
    return float(text) if text else None


def _signed(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}%"


def _interval(low: str, high: str) -> str:
    if not low or not high:
        return ""
    return f"[{float(low):+.1f}, {float(high):+.1f}]"


def answer(low: str, high: str) -> str:
    """What the seeds' 95% interval of the mean BD-rate says."""
    if not low or not high:
        return "no interval"
    if float(high) < 0:
        return "yes: fewer bits"
    if float(low) > 0:
        return "no: more bits"
    return "no answer (spans 0)"


def row(question: str, path: Path) -> str | None:
    """One Markdown row of a reading's bdrate_psnr.csv (None where it has no seeds yet)."""
    if not path.exists():
        return None
    with path.open(newline="", encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    per_seed = [line for line in lines if line["seed"] not in ("mean", "")]
    means = [line for line in lines if line["seed"] == "mean"]
    if not per_seed or len(means) != 1:
        return None
    mean = means[0]
    seeds = []
    for line in per_seed:
        rate, found = _number(line["bd_rate_percent"]), RANGE.search(line["note"])
        if rate is None:  # why, as bd_delta said it (its first note)
            seeds.append(f"n/a ({line['note'].split('; ')[0].removeprefix('n/a: ')})")
        else:
            seeds.append(_signed(rate) + (f" ({found.group(1)}%)" if found else ""))
    if mean["bd_rate_percent"]:
        low, high = mean["bd_rate_ci_seeds_low"], mean["bd_rate_ci_seeds_high"]
        cells = [_signed(_number(mean["bd_rate_percent"])), _interval(low, high)]
        cells += [_interval(mean["bd_rate_ci_images_low"], mean["bd_rate_ci_images_high"])]
        cells += [answer(low, high)]
    else:
        cells = ["n/a", "", "", mean["note"] or "no value"]
    name = f"`{path.parent.name}`"
    return "| " + " | ".join([question, name, "; ".join(seeds), *cells]) + " |"


def table(folder: Path) -> list[str]:
    columns = ["question", "reading", "per seed (shared quality range)", "mean"]
    columns += ["95% CI, seeds (t)", "95% CI, images (bootstrap)", "the seeds' answer"]
    header = ["| " + " | ".join(columns) + " |", "|---|---|---|---:|---|---|---|"]
    rows = [row(q, folder / name / "bdrate_psnr.csv") for q, name in READINGS]
    return header + [r for r in rows if r is not None]


def render(folder: Path = HERE) -> str:
    """summary.md's text from the readings under ``folder`` (as designed; fronts in front/)."""
    intro = (
        "Written by `docs/results/readings/summary.py` from the readings' `bdrate_psnr.csv`"
        " (`make.sh`). BD-rate (%) of the first arm against the second on Kodak, paired by seed;"
        " per seed with the share of the quality range both curves cover where it is under 75%."
    )
    text = [
        "# Issue 19's readings over the committed seeds",
        "",
        intro,
        "",
        "## As designed",
        "",
        *table(folder),
        "",
        "## On the curves' Pareto fronts (`bdrate.py --front --min-points 2`)",
        "",
        *table(folder / "front"),
        "",
    ]
    return "\n".join(text)


def main() -> int:
    out = HERE / "summary.md"
    out.write_text(render(), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
