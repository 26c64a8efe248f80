"""The plots of an Optuna study (hparams_search=balanced_optuna) show the study's data: read back
from the figure objects, not looked at. In-memory studies, no training."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.importance import MeanDecreaseImpurityImportanceEvaluator
from optuna.visualization import matplotlib as optuna_plots

from hpcm.train.sweep import CONTOUR_PARAMS, contour_plot, importance_plot, write_study_plots

GAMMA, W_LR = CONTOUR_PARAMS


def study_of(points: list[tuple[float, float]]) -> optuna.Study:
    """A study whose trials are ``points`` (gamma, w_lr) in the search space of
    balanced_optuna.yaml (gamma on a log scale), with a made-up objective."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for gamma, w_lr in points:
            study.enqueue_trial({GAMMA: gamma, W_LR: w_lr})

    def objective(trial: optuna.Trial) -> float:
        gamma = trial.suggest_float(GAMMA, 1e-4, 0.03, log=True)
        w_lr = trial.suggest_float(W_LR, 0.005, 0.1)
        return (np.log10(gamma) + 2.6) ** 2 + w_lr

    study.optimize(objective, n_trials=len(points))
    return study


def visible_ticks(axis) -> list[float]:
    """The tick positions (major and minor) inside the axis's limits, in drawing order."""
    axis.axes.figure.canvas.draw()
    low, high = sorted(axis.get_view_interval())
    ticks = [*axis.get_majorticklocs(), *axis.get_minorticklocs()]
    labelled = [*axis.get_majorticklabels(), *axis.get_minorticklabels()]
    return sorted(
        t for t, label in zip(ticks, labelled, strict=True) if low <= t <= high and label.get_text()
    )


def test_contour_log_axis_covers_the_trials_in_increasing_order() -> None:
    # The three trials that Optuna 2.10's own contour drew on an axis from 5.5e4 down to 9e3.
    points = [(0.0011, 0.02), (0.002, 0.05), (0.0031, 0.09)]
    ax = contour_plot(study_of(points))
    gammas, w_lrs = np.array(points).T
    assert (w_lrs.min(), w_lrs.max()) == (0.02, 0.09)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
    # Increasing, around the trials, and tight: a 5% margin of the span in decades.
    span = np.log10(gammas.max() / gammas.min())
    assert x_low == pytest.approx(gammas.min() / 10 ** (0.05 * span))
    assert x_high == pytest.approx(gammas.max() * 10 ** (0.05 * span))
    assert y_low == pytest.approx(0.02 - 0.05 * 0.07) and y_high == pytest.approx(
        0.09 + 0.05 * 0.07
    )
    # under a decade: labelled at three plain values, not at every minor tick
    assert visible_ticks(ax.xaxis) == pytest.approx([0.0015, 0.002, 0.003])
    assert [t.get_text() for t in ax.xaxis.get_majorticklabels()] == ["0.0015", "0.002", "0.003"]
    assert ax.get_xlabel() == GAMMA and ax.get_ylabel() == W_LR
    # The points are the trials, coloured by their values; a filled contour between them.
    scatter = next(c for c in ax.collections if len(c.get_offsets()) == 3)
    assert np.allclose(scatter.get_offsets(), points)
    study = study_of(points)
    assert np.allclose(scatter.get_array(), [t.value for t in study.trials])
    assert len(ax.collections) == 2


def test_log_axis_ticks_are_few_and_round_whatever_the_span() -> None:
    from hpcm.train.sweep import _log_ticks

    # the first CPU study's gammas (1.05e-3 to 2.4e-3 with the margin): matplotlib labelled
    # all six minor ticks from 1.2e-3 to 2.2e-3 in scientific notation, overlapping
    assert _log_ticks(1.05e-3, 2.4e-3) == [0.0012, 0.0015, 0.002]
    assert _log_ticks(1e-4, 0.03) == [0.0001, 0.001, 0.01]
    assert _log_ticks(3e-4, 0.03) == [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02]


def test_contour_of_one_trial_and_of_a_study_without_the_pair() -> None:
    ax = contour_plot(study_of([(0.001, 0.02)]))
    assert ax.get_xscale() == "log"
    low, high = ax.get_xlim()
    assert low == pytest.approx(0.001 / 1.25) and high == pytest.approx(0.001 * 1.25)
    assert len(ax.collections) == 1  # the point alone
    with pytest.raises(ValueError, match="no finished trial has both"):
        contour_plot(study_of([(0.001, 0.02)]), ("optimizer.lr", W_LR))


def test_history_and_importance_plots_show_the_trials() -> None:
    points = [(0.0011, 0.02), (0.002, 0.05), (0.0031, 0.09), (0.0005, 0.07), (0.01, 0.01)]
    study = study_of(points)
    values = [t.value for t in study.trials]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = np.ravel(optuna_plots.plot_optimization_history(study))[0]
    (scatter,) = history.collections
    assert np.allclose(scatter.get_offsets(), np.column_stack([range(5), values]))
    (best,) = history.get_lines()
    assert np.allclose(best.get_ydata(), np.minimum.accumulate(values))

    importance = importance_plot(study)
    expected = optuna.importance.get_param_importances(
        study, evaluator=MeanDecreaseImpurityImportanceEvaluator(seed=0)
    )
    bars = {
        label.get_text(): patch.get_width()
        for label, patch in zip(importance.get_yticklabels(), importance.patches, strict=True)
    }
    assert bars == pytest.approx(dict(expected))
    assert sum(bars.values()) == pytest.approx(1.0)


def test_study_plots_are_written(tmp_path: Path) -> None:
    study = study_of([(0.0011, 0.02), (0.002, 0.05), (0.0031, 0.09)])
    written = write_study_plots(study, tmp_path)
    names = ["optuna_history.png", "optuna_importance.png", "optuna_contour.png"]
    assert written == [tmp_path / name for name in names]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
