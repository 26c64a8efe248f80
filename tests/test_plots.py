"""Plots: training curves from metrics.jsonl (python -m hpcm.plot) and Optuna study plots."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from hpcm import plot
from hpcm.run_layout import read_metrics, series
from hpcm.train.sweep import CONTOUR_PARAMS, write_study_plots

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir: Path, balanced: bool) -> Path:
    run_dir.mkdir(parents=True)
    lines = []
    for step in range(1, 6):
        record = {"step": step, "epoch": 0, "train/loss": 2.0 / step, "train/bpp_loss": 0.5}
        record["train/psnr"] = "nan" if step == 2 else 20.0 + step  # non-finite: a string
        if balanced:
            record |= {"train/task_weight_distortion": 0.5, "train/task_weight_bpp": 0.5}
        lines.append(json.dumps(record))
    lines.append(json.dumps({"step": 5, "epoch": 0, "test/loss": 0.4, "test/psnr": 24.0}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "tr')  # cut line
    return run_dir


def test_plot_training_curves_from_metrics(tmp_path: Path, capsys) -> None:
    adam = write_run(tmp_path / "adam", balanced=False)
    balanced = write_run(tmp_path / "balanced", balanced=True)
    records = read_metrics(balanced)
    assert series(records, "train/psnr") == ([1, 3, 4, 5], [21.0, 23.0, 24.0, 25.0])
    assert plot.main([str(adam)]) == 0
    assert (adam / "curves.png").read_bytes()[:8] == PNG
    out = tmp_path / "both.png"
    assert plot.main([str(adam), str(balanced), "--out", str(out)]) == 0
    assert out.stat().st_size > 20_000 and f"wrote {out}" in capsys.readouterr().out


def test_a_resumed_run_keeps_the_last_value_of_a_step_in_step_order() -> None:
    records = [{"step": s, "train/loss": float(s)} for s in (10, 20, 30)]
    records += [{"step": s, "train/loss": -float(s)} for s in (20, 30, 40)]  # resumed at 10
    assert series(records, "train/loss") == ([10, 20, 30, 40], [10.0, -20.0, -30.0, -40.0])


def test_plot_of_a_folder_without_metrics_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert plot.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no metrics.jsonl" in err


def test_study_plots(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    gamma, w_lr = CONTOUR_PARAMS

    def objective(trial: optuna.Trial) -> float:
        g = trial.suggest_float(gamma, 1e-4, 0.03, log=True)
        return (g - 0.003) ** 2 + (trial.suggest_float(w_lr, 0.005, 0.1) - 0.025) ** 2

    study.optimize(objective, n_trials=6)
    written = {p.name for p in write_study_plots(study, tmp_path)}
    assert written == {"optuna_history.png", "optuna_contour.png", "optuna_importance.png"}
    for name in written:
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_study_plots_of_an_empty_study_write_nothing(tmp_path: Path) -> None:
    assert write_study_plots(optuna.create_study(), tmp_path) == []


@pytest.mark.parametrize("command", [["--help"]])
def test_plot_help(command: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        plot.main(command)
    assert exit_info.value.code == 0
