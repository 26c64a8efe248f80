"""Tests for hpcm.eval.report (BD-rate tables, plots) and the shipped anchors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import bjontegaard as bd
import pytest

from hpcm.eval import anchors, report

# Published Kodak PSNR points (lyq133/LIC-HPCM README), typed here independently of the JSON.
BASE_BPP = [0.1211, 0.1757, 0.2729, 0.4125, 0.5898, 0.8209]
BASE_PSNR = [29.4022, 30.7547, 32.4012, 34.2063, 36.0145, 37.7525]
LARGE_BPP = [0.0951, 0.1537, 0.2438, 0.3778, 0.5516, 0.7843]
LARGE_PSNR = [28.9135, 30.4490, 32.1219, 33.9923, 35.8511, 37.7480]


def write_curve(path: Path, name: str, bpp: list[float], psnr: list[float]) -> Path:
    msssim = [1 - 10 ** (-(q - 17) / 10) for q in psnr]  # any increasing values in (0, 1)
    results = {"bpp": bpp, "psnr-rgb": psnr, "ms-ssim-rgb": msssim}
    path.write_text(json.dumps({"name": name, "description": "", "results": results}))
    return path


def test_identical_curves_give_zero() -> None:
    curve = (BASE_BPP, BASE_PSNR)
    for method in report.METHODS:
        assert report.bd_delta("rate", curve, curve, method).value == pytest.approx(0, abs=1e-9)
        assert report.bd_delta("metric", curve, curve, method).value == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("method", report.METHODS)
def test_published_large_vs_base_matches_bjontegaard(method: str) -> None:
    ref = report.load_curves("anchor:hpcm-base/kodak")[0]
    test = report.load_curves("anchor:hpcm-large/kodak")[0]
    assert ref.bpp == BASE_BPP and ref.results["psnr-rgb"] == BASE_PSNR
    assert test.bpp == LARGE_BPP and test.results["psnr-rgb"] == LARGE_PSNR
    (row,) = report.compare([test], ref, "psnr-rgb", method)
    assert row.bd_rate.value == bd.bd_rate(BASE_BPP, BASE_PSNR, LARGE_BPP, LARGE_PSNR, method)
    assert row.bd_metric.value == bd.bd_psnr(BASE_BPP, BASE_PSNR, LARGE_BPP, LARGE_PSNR, method)
    # HPCM-Large spends fewer bits than HPCM-Base for the same PSNR.
    assert -6.0 < row.bd_rate.value < -3.0
    assert row.bd_metric.value > 0


def test_non_overlapping_curves_give_message() -> None:
    low = ([0.1, 0.2, 0.3, 0.4], [28.0, 29.0, 30.0, 31.0])
    high = ([1.0, 2.0, 3.0, 4.0], [40.0, 41.0, 42.0, 43.0])
    for kind in ("rate", "metric"):
        result = report.bd_delta(kind, low, high)
        assert result.value is None
        assert "do not overlap" in result.note
    partial = ([0.1, 0.2, 0.3, 0.4], [28.0, 29.0, 30.0, 31.0])
    shifted = ([0.1, 0.2, 0.3, 0.4], [30.5, 31.5, 32.5, 33.5])
    result = report.bd_delta("rate", partial, shifted)
    assert result.value is None and "overlap 9% < 75%" in result.note
    assert report.bd_delta("rate", partial, shifted, min_overlap=0.05).value is not None


def test_too_few_points_and_non_monotone_give_message() -> None:
    three = ([0.1, 0.2, 0.4], [28.0, 30.0, 32.0])
    four = ([0.1, 0.2, 0.3, 0.4], [28.0, 29.0, 30.0, 31.0])
    assert "needs >= 4 points" in report.bd_delta("rate", four, three).note
    wobbly = ([0.1, 0.2, 0.3, 0.4], [28.0, 29.5, 29.0, 31.0])
    assert "does not rise" in report.bd_delta("rate", four, wobbly).note


def test_table_shows_message_instead_of_number(tmp_path: Path) -> None:
    ref = write_curve(tmp_path / "ref.json", "ref", [0.1, 0.2, 0.3, 0.4], [28, 29, 30, 31])
    far = write_curve(tmp_path / "far.json", "far", [1.0, 2.0, 3.0, 4.0], [40, 41, 42, 43])
    reference = report.load_curves(str(ref))[0]
    rows = report.compare(report.load_curves(str(far)), reference, "psnr-rgb")
    table = report.markdown_table(rows, reference, "psnr-rgb", "pchip", 0.75)
    assert "| far | 4 | n/a: quality ranges do not overlap | n/a: rate ranges do not overlap |" in (
        table
    )
    assert "method pchip" in table and "(4 points)" in table


def test_main_writes_markdown_csv_png(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "eval"
    runs.mkdir()
    write_curve(runs / "adam.json", "hpcm", BASE_BPP, BASE_PSNR)
    write_curve(runs / "balanced.json", "hpcm", LARGE_BPP, LARGE_PSNR)
    out = tmp_path / "report"
    argv = [str(runs), "anchor:hpcm-large/kodak", "--reference", str(runs / "adam.json")]
    assert report.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| hpcm (adam) (reference) | 6 | +0.00 | +0.000 |" in printed
    md = (out / "bdrate_psnr.md").read_text()
    assert md in printed
    with (out / "bdrate_psnr.csv").open() as handle:
        rows = {r["curve"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"hpcm (adam)", "hpcm (balanced)", "hpcm-large/kodak"}
    expected = bd.bd_rate(BASE_BPP, BASE_PSNR, LARGE_BPP, LARGE_PSNR, "pchip")
    assert float(rows["hpcm (balanced)"]["bd_rate_percent"]) == expected
    assert float(rows["hpcm-large/kodak"]["bd_rate_percent"]) == expected
    assert rows["hpcm (balanced)"]["method"] == "pchip"
    png = (out / "rd_psnr.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_main_ms_ssim_derives_db_and_resolves_anchor(tmp_path: Path) -> None:
    curve = write_curve(tmp_path / "run.json", "run", BASE_BPP, BASE_PSNR)
    out = tmp_path / "report"
    argv = [str(curve), "--reference", "anchor:hpcm-base/kodak", "--metric", "ms-ssim"]
    assert report.main([*argv, "--out", str(out)]) == 0
    md = (out / "bdrate_msssim.md").read_text()
    assert "Reference: hpcm-base/kodak-msssim (6 points); metric ms-ssim-db" in md
    assert "BD-MS-SSIM (dB)" in md
    loaded = report.load_curves(str(curve))[0]
    assert loaded.results["ms-ssim-db"][0] == pytest.approx(BASE_PSNR[0] - 17)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file or folder"),
        ("{not json", "malformed JSON"),
        ('{"name": "x"}', "not an eval JSON"),
        ('{"results": {"bpp": [0.1, 0.2], "psnr-rgb": [30.0]}}', "differ in length"),
        ('{"results": {"bpp": [0.1, "a"], "psnr-rgb": [30.0, 31.0]}}', "numbers only"),
        ('{"results": {"bpp": [0.0, 0.2], "psnr-rgb": [30.0, 31.0]}}', "must be positive"),
    ],
)
def test_bad_inputs_give_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: str | None, expected: str
) -> None:
    ref = write_curve(tmp_path / "ref.json", "ref", BASE_BPP, BASE_PSNR)
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    code = report.main([str(bad), "--reference", str(ref), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err
    assert not (tmp_path / "out").exists()


def test_unknown_anchor_and_missing_reference(capsys: pytest.CaptureFixture) -> None:
    assert report.main(["anchor:hpcm-base/kodak", "--reference", "anchor:nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown anchor 'nope'" in err
    assert report.main(["anchor:hpcm-base/kodak"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_anchors_shipped_and_sorted(capsys: pytest.CaptureFixture) -> None:
    names = anchors.anchor_names()
    models, datasets = ("hpcm-base", "hpcm-large"), ("kodak", "clic-pro-valid", "tecnick")
    expected = {f"{m}/{d}{s}" for m in models for d in datasets for s in ("", "-msssim")}
    assert set(names) == expected
    for name in names:
        data = anchors.load_anchor(name)
        assert "lyq133/LIC-HPCM" in data["description"]
        key = "ms-ssim-db" if name.endswith("-msssim") else "psnr-rgb"
        bpp, values = data["results"]["bpp"], data["results"][key]
        assert len(bpp) == len(values) == 6
        assert bpp == sorted(bpp) and values == sorted(values)
        assert all(math.isfinite(v) for v in bpp + values)
    assert report.main(["--list-anchors"]) == 0
    assert "hpcm-large/tecnick-msssim" in capsys.readouterr().out
