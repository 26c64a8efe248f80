"""docs/results/readings/summary.py: the table docs/results.md is read off. It says what each
reading's CSV holds (per seed, why a seed has no value, the mean with both intervals, which way
the seeds' interval points), and the committed summary.md is what it writes from the committed
CSV files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from script_modules import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "results" / "readings" / "summary.py"
COLUMNS = ["curve", "seed", "bd_rate_percent", "bd_rate_ci_seeds_low", "bd_rate_ci_seeds_high"]
COLUMNS += ["bd_rate_ci_images_low", "bd_rate_ci_images_high", "note"]


@pytest.fixture(scope="module")
def summary():
    return load_script(SCRIPT, "readings_summary")


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_row_gives_every_seed_the_mean_both_intervals_and_the_answer(summary, tmp_path) -> None:
    path = write(
        tmp_path / "x_vs_y" / "bdrate_psnr.csv",
        [
            {"seed": "0", "bd_rate_percent": "-12.34", "note": "! shared quality range only: 33%"},
            {"seed": "1", "bd_rate_percent": "-3.0", "note": "front of this curve: 3 of 4 points"},
            {"seed": "mean", "bd_rate_percent": "-7.67", "bd_rate_ci_seeds_low": "-20.5"}
            | {"bd_rate_ci_seeds_high": "-1.25", "bd_rate_ci_images_low": "-9"}
            | {"bd_rate_ci_images_high": "-6"},
        ],
    )
    cells = summary.row("q?", path).strip("| ").split(" | ")
    assert cells == ["q?", "`x_vs_y`", "-12.3% (33%); -3.0%", "-7.7%", "[-20.5, -1.2]"] + [
        "[-9.0, -6.0]",
        "yes: fewer bits",
    ]


def test_a_seed_without_value_says_why_and_the_mean_has_none(summary, tmp_path) -> None:
    path = write(
        tmp_path / "x_vs_y" / "bdrate_psnr.csv",
        [
            {"seed": "0", "note": "n/a: repeated bpp values; front of this curve: 1 of 4 points"},
            {"seed": "1", "bd_rate_percent": "4.0"},
            {"seed": "mean", "note": "n/a: 1 of 2 seeds have no BD value"},
        ],
    )
    cells = summary.row("q?", path).strip("| ").split(" | ")
    assert cells[2:] == ["n/a (repeated bpp values); +4.0%", "n/a", "", ""] + [
        "n/a: 1 of 2 seeds have no BD value"
    ]


@pytest.mark.parametrize(
    ("low", "high", "said"),
    [("-5", "-0.1", "yes: fewer bits"), ("0.2", "3", "no: more bits")]
    + [("-5", "3", "no answer (spans 0)"), ("", "", "no interval")],
)
def test_the_answer_follows_the_seeds_interval(summary, low, high, said) -> None:
    assert summary.answer(low, high) == said


def test_readings_without_seeds_are_left_out(summary, tmp_path) -> None:
    write(tmp_path / "adam_cautious_vs_adam" / "bdrate_psnr.csv", [{"seed": "0"}])
    assert summary.row("q?", tmp_path / "missing" / "bdrate_psnr.csv") is None
    assert summary.row("q?", tmp_path / "adam_cautious_vs_adam" / "bdrate_psnr.csv") is None
    assert len(summary.table(tmp_path)) == 2  # the header alone


def test_the_committed_summary_is_what_the_committed_readings_say(summary) -> None:
    committed = SCRIPT.with_name("summary.md").read_text(encoding="utf-8")
    assert summary.render() == committed
