"""The optimizer comparison: seeds paired curve by curve, the intervals across seeds and
the paired bootstrap over test images, warnings for unusable curves, the effective lambda, and a
whole `experiment=compare` sweep with a toy budget."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from hpcm.eval import compare, report, seeds, trade_off
from hpcm.run_layout import finished_result
from hpcm.train.build import train
from hpcm.train.losses import effective_lambda

ROOT = Path(__file__).resolve().parents[1]
BPP = [0.1, 0.2, 0.4, 0.8]
PSNR = [28.0, 30.0, 32.0, 34.0]


def per_image_curve(
    name: str, seed: int | None, scale: float = 1.0, n_images: int = 8, jitter: int = 0
) -> dict:
    """An eval JSON whose points are means over ``n_images`` images; every image's rate is the
    curve's rate times a per-image factor, times ``scale`` (the same PSNR everywhere)."""
    rng = np.random.default_rng(jitter)
    factors = rng.uniform(0.7, 1.3, n_images) if jitter else np.linspace(0.7, 1.3, n_images)
    factors = factors / factors.mean()
    bpp = [[b * scale * f for f in factors] for b in BPP]
    psnr = [[p + 0.5 * (f - 1.0) for f in factors] for p in PSNR]
    return {
        "name": name,
        "seed": seed,
        "results": {
            "bpp": [float(np.mean(r)) for r in bpp],
            "psnr-rgb": [float(np.mean(r)) for r in psnr],
        },
        "lambda": [0.0018, 0.0067, 0.025, 0.0483],
        "per_image": {
            "images": [f"im{i}.png" for i in range(n_images)],
            "bpp": bpp,
            "psnr-rgb": psnr,
        },
    }


def curve(data: dict, source: str = "") -> report.Curve:
    return report.parse_curve(data, source or f"{data['name']}_{data['seed']}.json")


def bd(kind: str, ref: tuple, test: tuple) -> report.BDResult:
    return report.bd_delta(kind, ref, test, "pchip", 0.75)


# ----------------------------------------------------------------------------- pairing
def test_curves_are_paired_seed_by_seed() -> None:
    refs = [curve(per_image_curve("adam", s)) for s in (0, 1, 2)]
    tests = [curve(per_image_curve("balanced", s)) for s in (2, 0, 1)]
    groups = seeds.pair_by_seed(tests, refs)
    assert list(groups) == ["balanced"]
    assert [(p.seed, p.test.seed, p.reference.seed) for p in groups["balanced"]] == [
        (0, 0, 0),
        (1, 1, 1),
        (2, 2, 2),
    ]
    with pytest.raises(ValueError, match="no reference curve of seed 3"):
        seeds.pair_by_seed([curve(per_image_curve("balanced", 3))], refs)
    with pytest.raises(ValueError, match="two curves of seed 0"):
        seeds.pair_by_seed(tests + [curve(per_image_curve("balanced", 0), "x.json")], refs)
    anchor = curve(per_image_curve("vtm", None))  # one reference without a seed serves all
    assert len(seeds.pair_by_seed(tests, [anchor])["balanced"]) == 3


# ----------------------------------------------------------------------------- statistics
def test_identical_curves_give_intervals_around_zero() -> None:
    refs = [curve(per_image_curve("adam", s, jitter=s + 1)) for s in (0, 1, 2)]
    tests = [curve(per_image_curve("balanced", s, jitter=s + 1)) for s in (0, 1, 2)]
    rows = seeds.compare_seeds(seeds.pair_by_seed(tests, refs), "psnr-rgb", bd, replicates=200)
    mean = rows[-1]
    assert mean.seed is None and mean.seeds == 3
    assert mean.rate == pytest.approx(0.0, abs=1e-9)
    assert mean.rate_images.low <= 0.0 <= mean.rate_images.high
    assert mean.rate_images.high - mean.rate_images.low < 1e-6  # paired: identical every time


def test_a_known_rate_factor_gives_that_bd_rate_with_intervals() -> None:
    # The test curves need 10% fewer bits at every quality on every image and seed: BD-rate
    # is -10% per seed, their mean, and (paired: every replicate keeps the factor) the bootstrap.
    refs = [curve(per_image_curve("adam", s, jitter=s + 1)) for s in (0, 1, 2)]
    tests = [curve(per_image_curve("balanced", s, 0.9, jitter=s + 1)) for s in (0, 1, 2)]
    rows = seeds.compare_seeds(seeds.pair_by_seed(tests, refs), "psnr-rgb", bd, replicates=200)
    for row in rows:
        assert row.rate == pytest.approx(-10.0, abs=1e-6)
    mean = rows[-1]
    assert mean.rate_images.low == pytest.approx(-10.0, abs=1e-6)
    assert mean.rate_images.high == pytest.approx(-10.0, abs=1e-6)
    assert mean.rate_seeds.low == pytest.approx(-10.0, abs=1e-6)


def test_seeds_interval_is_the_student_t_interval() -> None:
    interval = seeds.t_interval([-2.0, 0.0, 1.0])
    mean, sd = -1 / 3, float(np.std([-2.0, 0.0, 1.0], ddof=1))
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 dof)
    assert interval.low == pytest.approx(mean - half) and interval.high == pytest.approx(
        mean + half
    )
    assert seeds.t_interval([1.0]) is None


def test_bootstrap_interval_widens_with_image_scatter() -> None:
    # Per-image rate factors that differ between the optimizers: the BD-rate then depends on
    # which images are drawn, and the interval has a width.
    refs = [curve(per_image_curve("adam", 0, jitter=1))]
    test = per_image_curve("balanced", 0, jitter=7)
    rows = seeds.compare_seeds(
        seeds.pair_by_seed([curve(test)], refs), "psnr-rgb", bd, replicates=300
    )
    interval = rows[-1].rate_images
    assert interval.high - interval.low > 0.5
    assert interval.low <= rows[-1].rate <= interval.high


def test_a_seeds_note_names_each_front_cut_once() -> None:
    # the rate and the metric cell both report the cut of the same curve: the row says it once
    refs = [curve(per_image_curve("adam", 0))]
    dip = per_image_curve("balanced", 0)
    dip["results"]["psnr-rgb"][1] = dip["results"]["psnr-rgb"][0] - 0.05  # a dominated point

    def front(kind: str, ref: tuple, test: tuple) -> report.BDResult:
        return report.bd_delta(kind, ref, test, "pchip", 0.0, 2, front=True)

    rows = seeds.compare_seeds(seeds.pair_by_seed([curve(dip)], refs), "psnr-rgb", front, 20)
    assert rows[0].rate is not None
    assert rows[0].note == "front of this curve: 3 of 4 points"


# ----------------------------------------------------------------------------- the command
def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def evaluated_sweep(sweep: Path, monkeypatch, scales: dict[str, float]) -> None:
    """``sweep/eval`` as the real-bitstream evaluation leaves it: one curve per optimizer and seed
    (0 and 1), each rate scaled by ``scales[optimizer]``; the evaluation itself is skipped."""
    ev = sweep / "eval"
    ev.mkdir()
    for s in (0, 1):
        for name, scale in scales.items():
            write(ev / f"{name}_seed{s}.json", per_image_curve(name, s, scale))
    monkeypatch.setattr(compare.evaluate, "main", lambda argv: 0)  # the curves are made above


def test_bdrate_pairs_seeds_and_writes_table_csv_and_plot(tmp_path: Path, capsys) -> None:
    ev = tmp_path / "eval"
    ev.mkdir()
    for s in (0, 1):
        write(ev / f"adam_seed{s}.json", per_image_curve("adam", s, jitter=s + 1))
        write(ev / f"balanced_seed{s}.json", per_image_curve("balanced", s, 0.9, jitter=s + 1))
    out = tmp_path / "report"
    argv = [str(ev), "-r", "adam", "--bootstrap", "50", "--out", str(out)]
    assert report.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| balanced | 0 | 4 | -10.00 |" in printed
    assert "| **balanced mean** | 2 seeds | 4 | **-10.00** | [-10.00, -10.00] |" in printed
    assert "adam" not in [line.split("|")[1].strip() for line in printed.splitlines()[3:-1]]
    assert (out / "rd_psnr.png").stat().st_size > 0
    csv_text = (out / "bdrate_psnr.csv").read_text()
    assert "balanced,mean,4,adam" in csv_text
    globbed = [str(ev / "balanced_seed*.json"), "-r", str(ev / "adam_seed*.json")]
    assert report.main([*globbed, "--bootstrap", "0", "--out", str(tmp_path / "g")]) == 0
    assert "| **balanced mean** | 2 seeds | 4 | **-10.00** |" in capsys.readouterr().out


def test_the_report_says_where_each_lambda_lands_over_the_seeds(tmp_path: Path) -> None:
    ev = tmp_path / "eval"
    ev.mkdir()
    for s, scale in ((0, 1.0), (1, 1.1), (2, 1.05)):  # adam's rates move with the seed
        write(ev / f"adam_seed{s}.json", per_image_curve("adam", s, scale))
        if s < 2:
            write(ev / f"balanced_seed{s}.json", per_image_curve("balanced", s, 0.9))
    no_lambdas = per_image_curve("balanced", 2, 0.9)
    del no_lambdas["lambda"]  # a curve without lambdas: its points by index
    write(ev / "balanced_seed2.json", no_lambdas)
    out = tmp_path / "report"
    assert report.main([str(ev), "-r", "adam", "--bootstrap", "0", "--out", str(out)]) == 0
    table = (out / "points_psnr.md").read_text().splitlines()
    rows = [line for line in table if line.startswith(("| adam", "| balanced"))]
    # the reference first, then the others in the order they were read
    assert rows[0] == "| adam | 0.0018 | 3 | 0.1050 ± 0.0050 | 28.00 ± 0.00 |"
    assert rows[4] == "| balanced | 0.0018 | 2 | 0.0900 ± 0.0000 | 28.00 ± 0.00 |"
    assert rows[-4:][0] == "| balanced | point 0 | 1 | 0.0900 | 28.00 |"
    assert len(rows) == 4 + 4 + 4
    with (out / "points_psnr.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    first = [(r["seed"], float(r["bpp"])) for r in lines if r["curve"] == "adam"][:3]
    assert first == [
        ("0", pytest.approx(0.1)),
        ("1", pytest.approx(0.11)),
        ("2", pytest.approx(0.105)),
    ]
    no_lambda_rows = {r["lambda"] for r in lines if r["curve"] == "balanced" and r["seed"] == "2"}
    assert no_lambda_rows == {f"point {i}" for i in range(4)}


def test_an_ms_ssim_comparison_finds_its_reference_curves(tmp_path: Path, monkeypatch) -> None:
    # evaluate.py names the curves of MS-SSIM-trained runs OPTIMIZER-msssim; compare.reference
    # names the optimizer (adam), as with MSE runs.
    evaluated_sweep(tmp_path, monkeypatch, {"adam-msssim": 1.0, "balanced-msssim": 0.9})
    settings = OmegaConf.create(
        {"dataset": "/none", "reference": "adam", "metrics": ["psnr"], "bootstrap": 0}
    )
    assert compare.evaluate_and_report(tmp_path, settings, None, "ms-ssim") == 0
    table = (tmp_path / "report" / "bdrate_psnr.csv").read_text()
    assert "balanced-msssim,mean,4,adam-msssim" in table
    assert compare.reference_curve("adam", "mse") == "adam"
    assert compare.reference_curve("adam-msssim", "ms-ssim") == "adam-msssim"


def test_every_reading_of_compare_pairs_pairs_its_own_curves(tmp_path: Path, monkeypatch) -> None:
    # experiment=factorial_cpu's readings: each [CURVE, REFERENCE] pair gets its own report,
    # seed by seed against that reference (not compare.reference); a pair naming an optimizer
    # without curves is an error, not a silent gap.
    evaluated_sweep(tmp_path, monkeypatch, {"adam": 1.0, "famo_adam": 0.9, "replay_famo_adam": 0.8})
    settings = {"dataset": "/none", "reference": "adam", "metrics": ["psnr"], "bootstrap": 0}
    pairs = [["famo_adam", "replay_famo_adam"], ["replay_famo_adam", "adam"]]
    ok = OmegaConf.create(settings | {"pairs": pairs})
    assert compare.evaluate_and_report(tmp_path, ok, None) == 0
    reading = tmp_path / "report" / "famo_adam_vs_replay_famo_adam" / "bdrate_psnr.csv"
    rows = [line.split(",") for line in reading.read_text().splitlines()]
    mean = next(r for r in rows if r[:2] == ["famo_adam", "mean"])
    assert mean[3] == "replay_famo_adam" and float(mean[6]) == pytest.approx(12.5, abs=1e-6)
    assert {r[0] for r in rows[1:]} == {"famo_adam"}  # the reading's own curve only
    other = (tmp_path / "report" / "replay_famo_adam_vs_adam" / "bdrate_psnr.csv").read_text()
    row = next(line.split(",") for line in other.splitlines() if ",mean," in line)
    assert row[:4] == ["replay_famo_adam", "mean", "4", "adam"]
    assert float(row[6]) == pytest.approx(-20.0, abs=1e-6)
    missing = OmegaConf.create(settings | {"pairs": [["balanced", "adam"]]})
    assert compare.evaluate_and_report(tmp_path, missing, None) == 1


def test_a_mean_without_every_seed_says_how_many_lack_a_value(tmp_path: Path, capsys) -> None:
    ev = tmp_path / "eval"
    ev.mkdir()
    for s in (0, 1):
        write(ev / f"adam_seed{s}.json", per_image_curve("adam", s))
        collapsed = per_image_curve("balanced_qp", s, 0.9)
        if s == 1:  # every lambda at one rate: no curve to integrate
            collapsed["results"]["bpp"] = [0.001] * 4
        write(ev / f"balanced_qp_seed{s}.json", collapsed)
    assert report.main([str(ev), "-r", "adam", "--bootstrap", "0", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| **balanced_qp mean** | 2 seeds | 0 | **n/a** |" in printed
    assert "n/a: 1 of 2 seeds have no BD value" in printed


def test_unusable_curves_are_named_with_what_to_change(tmp_path: Path) -> None:
    flat = curve(
        {
            "name": "balanced",
            "seed": 0,
            "results": {"bpp": BPP, "psnr-rgb": [20.0, 20.2, 20.1, 20.3]},
        }
    )
    narrow = curve(
        {"name": "adam", "seed": 0, "results": {"bpp": BPP, "psnr-rgb": [28.0, 28.1, 28.2, 28.3]}}
    )
    far = curve(
        {"name": "balanced_qp", "seed": 0, "results": {"bpp": BPP, "psnr-rgb": [40, 41, 42, 43]}}
    )
    lines = report.usability_warnings([flat, far], [narrow], "psnr-rgb", 0.75)
    joined = "\n".join(lines)
    assert "balanced (seed 0): PSNR does not rise with rate" in joined and "train longer" in joined
    assert "balanced_qp (seed 0): shares 0% of its PSNR range with adam" in joined
    spans = report.usability_warnings([narrow], [narrow], "psnr-rgb", 0.75)
    assert spans and "spans only 0.30 dB" in spans[0]
    assert (
        report.usability_warnings([curve(per_image_curve("adam", 0))], [], "psnr-rgb", 0.75) == []
    )
    # The reference of a warning is the one the report pairs the curve with (seeds.reference_of):
    # a single reference without seed serves every seed, one of seed 0 only seed 0.
    other_seed, anchor = dataclasses.replace(far, seed=1), dataclasses.replace(narrow, seed=None)
    assert "shares 0%" in report.usability_warnings([other_seed], [anchor], "psnr-rgb", 0.75)[0]
    assert seeds.pair_by_seed([other_seed], [anchor])["balanced_qp"][0].reference is anchor
    assert report.usability_warnings([other_seed], [narrow], "psnr-rgb", 0.75) == []
    with pytest.raises(ValueError, match="no reference curve of seed 1"):
        seeds.pair_by_seed([other_seed], [narrow])


def test_effective_lambda_is_lambda_times_the_applied_weight_ratio() -> None:
    tasks = torch.tensor([5.0, 0.4])
    assert effective_lambda(0.013, torch.ones(2), tasks).item() == pytest.approx(0.013)
    assert effective_lambda(0.013, torch.tensor([0.2, 0.8]), tasks).item() == pytest.approx(
        0.013 / 4
    )
    # Several rates: their weights averaged by each rate's share.
    scales = torch.tensor([5.0, 0.1, 0.3, 0.0, 0.1])
    applied = torch.tensor([0.1, 0.2, 0.4, 0.1, 0.2])
    mean_rate_weight = (0.2 * 0.1 + 0.4 * 0.3 + 0.2 * 0.1) / 0.5
    assert effective_lambda(0.013, applied, scales).item() == pytest.approx(
        0.013 * 0.1 / mean_rate_weight
    )


# ----------------------------------------------------------------------------- end to end
def make_images(folder: Path, count: int, size: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        base = rng.integers(0, 255, (size // 32, size // 32, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        image.save(folder / f"img{i}.png")


@pytest.mark.slow
def test_compare_experiment_end_to_end_and_resumes(
    make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_images(tmp_path / "train", 2, 256, 0)
    make_images(tmp_path / "test", 2, 256, 1)
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "experiment=compare",
        "model=tiny",
        "data=folder",
        f"data.train_dir={tmp_path / 'train'}",
        f"data.test_dir={tmp_path / 'test'}",
        "data.batch_size=1",
        "data.num_workers=0",
        "logger=none",
        "optimizer=adam,balanced",
        "seed=0,1",
        "trainer.epochs=1",
        "trainer.max_steps_per_epoch=1",
        "trainer.progress_bar=false",
        "trainer.showcase=false",  # its figures are tested in test_showcase.py
        "compare.bootstrap=20",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        cmd, check=False, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p.name for p in sweep.iterdir() if (p / "last.pth.tar").is_file())
    assert len(runs) == 16 and "balanced_0.0483_seed1" in runs
    curves = sorted(p.name for p in (sweep / "eval").glob("*.json"))
    assert curves == [
        "adam_seed0.json",
        "adam_seed1.json",
        "balanced_seed0.json",
        "balanced_seed1.json",
    ]
    data = json.loads((sweep / "eval" / "balanced_seed1.json").read_text())
    assert data["seed"] == 1 and sorted(data["lambda"]) == [0.0018, 0.0067, 0.025, 0.0483]
    assert len(data["per_image"]["bpp"][0]) == 2
    table = (sweep / "report" / "bdrate_psnr.md").read_text()
    assert "| balanced | 0 |" in table and "**balanced mean**" in table
    assert (sweep / "report" / "rd_psnr.png").is_file()
    assert "| balanced | 0.0483 | 2 |" in (sweep / "report" / "effective_lambda.md").read_text()
    assert "WARNING: " in done.stderr  # one step of training: not a usable comparison

    # The same command skips the finished runs: shown on one of them, with its job's config
    # (a second sweep would only repeat the evaluation).
    run = sweep / "balanced_0.0483_seed1"
    stamp = (run / "last.pth.tar").stat().st_mtime_ns
    job = [a for a in cmd[3:] if "," not in a and not a.startswith("hydra.")]
    cfg = make_cfg(run, *job, "optimizer=balanced", "lmbda=0.0483", "seed=1", short=False)
    with caplog.at_level(logging.INFO):
        assert train(cfg, multirun=True) == finished_result(run, 1)
    assert "finished all its epochs already: skipped" in caplog.text
    assert (run / "last.pth.tar").stat().st_mtime_ns == stamp


def test_the_shipped_base_model_loads_and_starts_a_run(make_cfg, tmp_path: Path) -> None:
    import hpcm
    from hpcm.codec.checkpoint import CheckpointError

    model = hpcm.load_model("pretrained:tiny_base")
    assert model.name == "tiny" and next(model.parameters()).dtype == torch.float32
    # fp16 weights, fp32 constants: a likelihood bound flushed to 0 would make rates infinite
    assert model.entropy.likelihood_lower_bound.bound.item() == pytest.approx(1e-9)
    with pytest.raises(
        CheckpointError, match="unknown pretrained model 'nope'; shipped: tiny_base"
    ):
        hpcm.load_model("pretrained:nope")

    from hpcm.train.build import build_trainer

    trainer = build_trainer(make_cfg(tmp_path, "init_from=pretrained:tiny_base"))
    for key, value in model.state_dict().items():
        if not key.startswith(("y_entropy.", "z_entropy.")):  # coding tables: by update()
            assert torch.equal(trainer.model.state_dict()[key], value), key


def test_the_nominal_grid_that_lands_on_target_effective_lambdas(
    tmp_path: Path, capsys, write_trade_off_run
) -> None:
    # effective = nominal / 2 at 0.002 and nominal / 4 at 0.008 (the ratios the runs end at):
    # in log-log the line of slope 1/2 through (0.002, 0.001) and (0.008, 0.002), so the
    # nominal lambda of a target is 0.002 * (target / 0.001)^2 (0.004: beyond the measured)
    sweep = tmp_path / "sweep"
    for lmbda, ratio in ((0.002, 0.5), (0.008, 0.25)):
        write_trade_off_run(sweep / f"b_{lmbda}_seed0", "balanced", lmbda, 0, ratio)
    runs = trade_off.read_sweep(sweep, tail=0.01)  # the last record only: nominal * ratio
    grid = trade_off.nominal_for(runs, "balanced", [0.001, 0.0015, 0.002, 0.004])
    assert [n for _, n, _ in grid] == pytest.approx([0.002, 0.0045, 0.008, 0.032], rel=1e-6)
    assert [outside for *_, outside in grid] == [False, False, False, True]
    assert trade_off.main([str(sweep), "--tail", "0.01", "--grid", "balanced", "0.0015"]) == 0
    assert "grid: [0.0045]" in capsys.readouterr().out
    assert trade_off.main([str(sweep), "--grid", "adam", "0.001"]) == 1
    assert "adam: 0 lambda(s) measured, the grid needs 2" in capsys.readouterr().err


def test_trade_off_report_of_a_sweep(tmp_path: Path, capsys, write_trade_off_run) -> None:
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        for lmbda in (0.001, 0.004):
            write_trade_off_run(sweep / f"adam_{lmbda}_seed{seed}", "adam", lmbda, seed, 1.0)
            ratio = 0.5 if seed == 0 else 0.3
            write_trade_off_run(sweep / f"b_{lmbda}_seed{seed}", "balanced_qp", lmbda, seed, ratio)
    (sweep / "eval").mkdir()  # not a run: ignored
    runs = trade_off.read_sweep(sweep, tail=0.2)
    assert len(runs) == 8 and runs[0].optimizer == "adam"
    assert len(trade_off.read_sweep([sweep, sweep])) == 16  # several sweeps into one report
    qp = [r for r in runs if r.optimizer == "balanced_qp" and r.lmbda == 0.004]
    # the mean over steps 90 and 100 (the last 20% of 10..100)
    expected = [0.004 * (1 + (ratio - 1) * s / 100) for ratio in (0.5, 0.3) for s in (90, 100)]
    assert [r.effective for r in qp] == pytest.approx(
        [sum(expected[:2]) / 2, sum(expected[2:]) / 2]
    )
    assert qp[0].weights == pytest.approx({"distortion": 0.4, "bpp": 0.6})
    assert trade_off.main([str(sweep)]) == 0
    table = (sweep / "report" / "effective_lambda.md").read_text()
    assert "| adam | 0.001 | 2 | 0.001 [0.001, 0.001] | 1.00 |" in table
    assert "| balanced_qp | 0.004 | 2 |" in table
    assert (sweep / "report" / "effective_lambda.png").read_bytes()[:4] == b"\x89PNG"
    rows = (sweep / "report" / "effective_lambda.csv").read_text().splitlines()
    assert rows[0] == "optimizer,seed,lambda,effective_lambda,weight_bpp,weight_distortion"
    assert len(rows) == 9
    assert trade_off.main([str(tmp_path / "eval_only")]) == 1
    (tmp_path / "empty").mkdir()
    assert trade_off.main([str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().err.count("error: ") == 2


def test_seeds_reported_apart_join_from_their_csvs(tmp_path: Path, write_trade_off_run) -> None:
    # two seeds, each swept (on its own machine) and reported into its own folder, then joined
    # from the two effective_lambda.csv files: the same table as one report of both sweeps
    for seed in (0, 1):
        for lmbda in (0.001, 0.004):
            ratio = 0.5 if seed == 0 else 0.3
            write_trade_off_run(
                tmp_path / f"s{seed}" / f"b_{lmbda}", "balanced", lmbda, seed, ratio
            )
        assert trade_off.main([str(tmp_path / f"s{seed}")]) == 0
    both = trade_off.write_report([tmp_path / "s0", tmp_path / "s1"], tmp_path / "both")
    csvs = [str(tmp_path / f"s{seed}" / "report" / "effective_lambda.csv") for seed in (0, 1)]
    assert trade_off.main([*csvs, "--out", str(tmp_path / "joined")]) == 0
    joined = (tmp_path / "joined" / "effective_lambda.md").read_text()
    assert joined == both[1].read_text()
    assert "| balanced | 0.004 | 2 |" in joined
    assert (tmp_path / "joined" / "effective_lambda.csv").read_text() == both[0].read_text()
    # a CSV of something else, or a CSV without --out, is a one-line error
    (tmp_path / "other.csv").write_text("curve,bpp\nadam,0.1\n")
    assert trade_off.main([str(tmp_path / "other.csv"), "--out", str(tmp_path / "x")]) == 1
    assert trade_off.main([csvs[0]]) == 1


def test_one_optimizer_has_one_colour_in_every_figure(
    tmp_path: Path, monkeypatch, write_trade_off_run
) -> None:
    # The figures of one comparison list the optimizers in different orders (the R-D plot the
    # reference first, then the files; the effective-lambda plot by name); each optimizer must
    # still get one colour in all of them, and the same in another comparison.
    from matplotlib.colors import to_hex

    from hpcm.eval import plots

    figures, agg_figure = [], plots.agg_figure

    def recording(size: tuple[float, float]):  # every figure drawn, in order
        figures.append(agg_figure(size))
        return figures[-1]

    monkeypatch.setattr(plots, "agg_figure", recording)
    monkeypatch.setattr(trade_off, "agg_figure", recording)

    def colours(fig) -> dict[str, str]:
        """Legend label (the optimizer's name) -> colour, over every axes of ``fig``."""
        out = {}
        for ax in fig.axes:
            for line in ax.get_lines():
                label = line.get_label().split(",")[0].removesuffix(" (reference)")
                if not label.startswith("_") and label != "effective = nominal":
                    out[label] = to_hex(line.get_color())
        return out

    names = ["famo_adam", "adam", "balanced", "my_optimizer"]  # the reference first
    sweep, ev = tmp_path / "sweep", tmp_path / "sweep" / "eval"
    ev.mkdir(parents=True)
    for i, name in enumerate(names):
        for seed in (0, 1):
            write(ev / f"{name}_seed{seed}.json", per_image_curve(name, seed, 1 - 0.05 * i))
            write_trade_off_run(sweep / f"{name}_0.001_seed{seed}", name, 0.001, seed, 0.5)
    argv = [str(ev), "-r", "famo_adam", "--bootstrap", "0", "--out", str(sweep / "report")]
    assert report.main(argv) == 0
    trade_off.write_report(sweep, sweep / "report")
    rd, effective = colours(figures[0]), colours(figures[1])
    assert set(rd) == set(effective) == set(names)
    assert rd == effective
    assert len(set(rd.values())) == len(names)  # these four are told apart
    assert rd["adam"] == to_hex("C0") and rd["balanced"] == to_hex("C2")

    # The same colours without seeds (one curve each) and in evaluate.py's plot of the curves.
    for i, name in enumerate(reversed(names)):
        write(tmp_path / f"{name}.json", per_image_curve(name, None, 1 - 0.05 * i))
    files = [str(tmp_path / f"{name}.json") for name in reversed(names)]
    assert report.main([*files, "-r", "adam", "--out", str(tmp_path / "plain")]) == 0
    assert colours(figures[2]) == rd
    curves = {f"{n}_seed{s}": per_image_curve(n, s)["results"] for n in names for s in (0, 1)}
    groups = {label: label.rsplit("_seed", 1)[0] for label in curves}
    plots.write_rd_plots(curves, tmp_path, groups=groups)
    drawn = {line.get_label(): line for line in figures[3].axes[0].get_lines()}
    for label, group in groups.items():  # seeds: their group's colour, their own marker
        assert to_hex(drawn[label].get_color()) == rd[group]
    assert drawn["adam_seed0"].get_marker() != drawn["adam_seed1"].get_marker()
    assert plots.optimizer_color("adam-msssim") == plots.optimizer_color("adam")
    # Names outside the table (a model against JPEG, anchors) prefer colours that collide here;
    # within one figure they get distinct ones, the same for the same names, the table's unmoved.
    others = ["tiny", "JPEG (Pillow)", "VTM", "hpcm-base/kodak", "vtm-17.0/kodak"]
    assert len({plots.optimizer_color(name) for name in others}) < len(others)
    picked = plots.curve_colors(["balanced", *others, "adam"])
    assert len(set(picked.values())) == len(picked) == 7
    assert picked == plots.curve_colors(reversed(picked))
    assert picked["adam"] == "C0" and picked["balanced"] == "C2"
