"""Tests for hpcm.eval.report (BD-rate tables, plots) and the shipped anchors."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import bjontegaard as bd
import pytest

from hpcm.eval import anchors, report
from hpcm.metrics import ms_ssim_db

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
    (row,) = report.compare([test], ref, "psnr-rgb", method=method)
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
    # Partial overlap: a number over the shared range, with a warning; a floor makes it n/a.
    result = report.bd_delta("rate", partial, shifted)
    assert result.value is not None and result.note == "! shared quality range only: 9%"
    assert result.cell(2).endswith("(! shared quality range only: 9%)")
    strict = report.bd_delta("rate", partial, shifted, min_overlap=0.75)
    assert strict.value is None and "overlap 9% < 75%" in strict.note
    assert report.bd_delta("rate", partial, partial).note == ""
    # A short curve wholly inside the other's quality range is compared over all of its own
    # range, though that is a small share of the joint one: the note says which.
    inner = ([0.15, 0.25], [29.0, 29.5])
    note = report.bd_delta("rate", partial, inner, min_points=2).note
    assert note == "! shared quality range only: 17%, all of this curve's"
    note = report.bd_delta("rate", inner, partial, min_points=2).note
    assert note == "! shared quality range only: 17%, all of the reference's"
    assert report.bd_delta("metric", partial, inner, min_points=2).note.endswith("this curve's")


@pytest.mark.parametrize("method", report.METHODS)
def test_hpcm_base_against_vtm_anchor_is_near_the_paper(method: str) -> None:
    # Table 1 of the HPCM paper: -15.31% (Base) and -19.19% (Large) against VTM-22.0 on Kodak.
    # The shipped VTM anchor is CompressAI's VTM 9.1 run, hence a small difference.
    vtm = report.load_curves("anchor:vtm/kodak")[0]
    curves = report.load_curves("anchor:hpcm-base/kodak") + report.load_curves(
        "anchor:hpcm-large/kodak"
    )
    base, large = report.compare(curves, vtm, "psnr-rgb", method=method)
    assert base.bd_rate.value == pytest.approx(-15.31, abs=1.5)
    assert large.bd_rate.value == pytest.approx(-19.19, abs=1.5)
    assert base.bd_rate.note.startswith("! shared quality range only")


# Measured here (bdrate.py, HPCM-Base / HPCM-Large against the shipped VTM curve of the same set)
# and the HPCM paper's Table 1, whose reference is VTM-22.0 (the shipped points: VTM 17.0 on CLIC
# Pro Valid, VTM 18.0 on Tecnick).
MEASURED_VS_VTM = {
    "clic-pro-valid": {
        "pchip": (-13.97, -18.13),
        "akima": (-13.97, -18.14),
        "cubic": (-13.83, -18.06),
    },
    "tecnick": {
        "pchip": (-18.24, -22.25),
        "akima": (-18.24, -22.24),
        "cubic": (-18.54, -22.53),
    },
}
PAPER_VS_VTM22 = {"clic-pro-valid": (-14.23, -18.37), "tecnick": (-18.16, -22.20)}


@pytest.mark.parametrize("method", report.METHODS)
@pytest.mark.parametrize("dataset", sorted(MEASURED_VS_VTM))
def test_hpcm_against_vtm_on_clic_and_tecnick(dataset: str, method: str) -> None:
    vtm = report.load_curves(f"anchor:vtm/{dataset}")[0]
    curves = report.load_curves(f"anchor:hpcm-base/{dataset}") + report.load_curves(
        f"anchor:hpcm-large/{dataset}"
    )
    rows = report.compare(curves, vtm, "psnr-rgb", method=method)
    for row, measured, paper in zip(
        rows, MEASURED_VS_VTM[dataset][method], PAPER_VS_VTM22[dataset], strict=True
    ):
        assert row.bd_rate.value is not None and row.bd_rate.value < 0
        assert row.bd_rate.value == pytest.approx(measured, abs=0.01)  # what the docs report
        assert row.bd_rate.value == pytest.approx(paper, abs=0.5)  # older VTM, other protocol
        # VTM spans a wider quality range than HPCM: the number covers all of HPCM's range.
        assert row.bd_rate.note.startswith("! shared quality range only")
    assert rows[1].bd_rate.value < rows[0].bd_rate.value  # Large saves more than Base


def test_vtm_anchor_without_ms_ssim_is_refused(capsys: pytest.CaptureFixture) -> None:
    argv = ["anchor:hpcm-base/tecnick", "--reference", "anchor:vtm/tecnick", "--metric", "ms-ssim"]
    assert report.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "anchor:vtm/tecnick: reference has no ms-ssim-db data" in err


def test_main_warns_on_partial_overlap(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["anchor:hpcm-base/kodak", "--reference", "anchor:vtm/kodak", "--out", str(tmp_path)]
    assert report.main(argv) == 0
    captured = capsys.readouterr()
    assert (
        "| hpcm-base/kodak | 6 | -16.02 (! shared quality range only: 41%, all of this curve's) |"
        in captured.out
    )
    assert captured.err.startswith("warning: ") and "--min-overlap 0.75" in captured.err
    assert report.main([*argv, "--min-overlap", "0.75"]) == 0
    assert "n/a: quality overlap 41% < 75%" in capsys.readouterr().out


def test_older_compressai_keys_are_read(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    ms = [0.95, 0.96, 0.97, 0.98]
    old = {"results": {"bpp": [0.1, 0.2, 0.3, 0.4], "psnr": [28, 29, 30, 31], "ms-ssim": ms}}
    path.write_text(json.dumps(old))
    curve = report.load_curves(str(path))[0]
    assert curve.results["psnr-rgb"] == [28, 29, 30, 31] and curve.results["ms-ssim-rgb"] == ms
    assert curve.results["ms-ssim-db"][0] == pytest.approx(13.0103, abs=1e-4)
    # When both spellings are present, the current key wins.
    both = {"results": {"bpp": [0.1, 0.2], "psnr": [1.0, 2.0], "psnr-rgb": [28.0, 29.0]}}
    assert report.parse_curve(both, "x").results["psnr-rgb"] == [28.0, 29.0]


def test_pareto_fronts_score_curves_whose_quality_dips(tmp_path: Path, capsys) -> None:
    # FAMO after 600 steps: two nominal lambdas at nearly one rate, the second 0.05 dB lower
    ref = ([0.02, 0.03, 0.04, 0.05], [20.5, 22.1, 22.8, 22.9])
    dip = ([0.0335, 0.0341, 0.0414, 0.0517], [22.70, 22.65, 23.02, 23.38])
    assert report.bd_delta("rate", ref, dip).note == "n/a: quality does not rise with rate"
    result = report.bd_delta("rate", ref, dip, front=True)  # 3 points: below the default 4
    assert result.value is None
    assert result.note == "n/a: needs >= 4 points per curve; front of this curve: 3 of 4 points"
    result = report.bd_delta("rate", ref, dip, min_points=3, front=True)
    kept = ([0.0335, 0.0414, 0.0517], [22.70, 23.02, 23.38])  # the dominated point dropped
    assert result.value == pytest.approx(report.bd_delta("rate", ref, kept, min_points=3).value)
    assert result.note.endswith("front of this curve: 3 of 4 points")
    # a curve already on its front is scored as without --front, with no note about it
    plain = report.bd_delta("rate", ref, kept, min_points=3)
    cut = report.bd_delta("rate", ref, kept, min_points=3, front=True)
    assert (cut.value, cut.note) == (plain.value, plain.note)
    # from the command line: the header says how the curves were scored
    write_curve(tmp_path / "ref.json", "adam", *map(list, ref))
    write_curve(tmp_path / "dip.json", "balanced", *map(list, dip))
    argv = [str(tmp_path / "dip.json"), "-r", str(tmp_path / "ref.json"), "--out", str(tmp_path)]
    assert report.main([*argv, "--front", "--min-points", "3"]) == 0
    out = capsys.readouterr().out
    assert "min overlap 0%; Pareto fronts; >= 3 points" in out.splitlines()[0]
    assert "front of this curve: 3 of 4 points" in out
    assert report.main([*argv, "--min-points", "1"]) == 1
    assert "--min-points must be 2 or more" in capsys.readouterr().err


def test_too_few_points_and_non_monotone_give_message() -> None:
    three = ([0.1, 0.2, 0.4], [28.0, 30.0, 32.0])
    four = ([0.1, 0.2, 0.3, 0.4], [28.0, 29.0, 30.0, 31.0])
    assert "needs >= 4 points" in report.bd_delta("rate", four, three).note
    # a search's short curves: pchip from 2 points when asked, the cubic fit never below 4
    assert report.bd_delta("rate", four, three, min_points=2).value is not None
    assert "needs >= 4 points" in report.bd_delta("rate", four, three, "cubic", min_points=2).note
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
    vtm = {  # name -> (source repository, codec version, points, has MS-SSIM)
        "vtm/kodak": ("InterDigitalInc/CompressAI", "VTM 9.1", 8, True),
        "vtm/clic-pro-valid": ("google-deepmind/c3_neural_compression", "VTM-17.0", 11, False),
        "vtm/tecnick": ("duanzhiihao/lossy-vae", "VTM 18.0", 36, False),
    }
    assert set(names) == expected | set(vtm)
    for name in names:
        data = anchors.load_anchor(name)
        source, version, points, msssim = vtm.get(name, ("lyq133/LIC-HPCM", "", 6, False))
        assert source in data["description"]
        assert version in data["description"]  # the codec version is part of the anchor
        keys = ["psnr-rgb"] if not name.endswith("-msssim") else []
        if msssim or name.endswith("-msssim"):
            keys += ["ms-ssim-rgb", "ms-ssim-db"]
        else:
            assert "ms-ssim-rgb" not in data["results"] and "ms-ssim-db" not in data["results"]
        if name in vtm and not msssim:
            assert "no MS-SSIM" in data["description"]  # said, not silently missing
        bpp = data["results"]["bpp"]
        for key in keys:
            values = data["results"][key]
            assert len(bpp) == len(values) == points
            assert all(a < b for a, b in itertools.pairwise(bpp))  # strictly increasing rate
            assert all(a < b for a, b in itertools.pairwise(values))  # and quality
            assert all(math.isfinite(v) for v in bpp + values)
        if "ms-ssim-rgb" in keys:
            derived = [ms_ssim_db(v) for v in data["results"]["ms-ssim-rgb"]]
            assert derived == pytest.approx(data["results"]["ms-ssim-db"], abs=1e-3)
    assert report.main(["--list-anchors"]) == 0
    listed = capsys.readouterr().out
    assert "hpcm-large/tecnick-msssim" in listed
    assert "vtm/clic-pro-valid                   11 points  psnr-rgb\n" in listed
    assert "vtm/tecnick                          36 points  psnr-rgb\n" in listed


@pytest.mark.parametrize(
    ("name", "metric"),
    [
        ("vtm/kodak", "psnr"),
        ("vtm/kodak", "ms-ssim"),
        ("vtm/tecnick", "psnr"),
        ("hpcm-base/kodak-msssim", "ms-ssim"),
    ],
)
def test_anchors_go_through_compressai_plot(tmp_path: Path, name: str, metric: str) -> None:
    from compressai.utils.plot.__main__ import main as compressai_plot

    path = tmp_path / "anchor.json"
    path.write_text(json.dumps(anchors.load_anchor(name)))
    compressai_plot(["-f", str(path), "-m", metric, "-o", str(tmp_path / "plot.png")])
    assert (tmp_path / "plot.png").stat().st_size > 10_000
