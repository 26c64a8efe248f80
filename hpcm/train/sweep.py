"""Optuna pieces of the hyper-parameter search (``hparams_search=balanced_optuna``): the
resumable seeded sampler, the callback that fails the trials of a killed command, and the
study plots written at the end of a sweep."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from optuna.trial import TrialState

log = logging.getLogger(__name__)


class ResumableTPESampler(optuna.samplers.TPESampler):
    """``TPESampler(seed=seed, **kwargs)`` that, in a resumed study, reseeds with ``seed + N``
    (N: the trials the study holds when this command asks for its first one), so that a seeded
    search goes on with new start-up points instead of replaying its first ones."""

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._seed, self._kwargs = seed, kwargs
        self._first_trial: int | None = None

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        if self._first_trial is None:  # the first trial of this command, before any sampling
            self._first_trial = trial.number
            if self._seed is not None and trial.number:
                # A fresh TPE state and RNG (optuna 2.10 keeps both in attributes set here).
                super().__init__(seed=self._seed + trial.number, **self._kwargs)
        return super().infer_relative_search_space(study, trial)


class FailStaleTrials(Callback):
    """Hydra callback of the search: when a command starts, the trials that a killed earlier
    command left ``RUNNING`` in the study are marked ``FAIL``, so that the resumed study does
    not count them, and TPE does not treat their points as pending forever.

    Only for sqlite storages (a local file: a trial found running there belongs to a dead
    command); with a server database another machine's command may be running the same study
    at the same time, so its running trials are only listed (mark them with
    ``optuna.load_study(...).tell(NUMBER, state=optuna.trial.TrialState.FAIL)``).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        storage, name = sweeper.get("storage"), sweeper.get("study_name")
        if not storage or not name:
            return
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # a new study: nothing can be stale
            return
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        numbers = ", ".join(str(t.number) for t in running)
        if not str(storage).startswith("sqlite"):
            log.warning(
                "study %s has running trials %s (another command, or a dead one)", name, numbers
            )
            return
        for trial in running:
            study.tell(trial.number, state=TrialState.FAIL)
        log.warning(
            "study %s: trial(s) %s were left running by a command that stopped: marked FAIL",
            name,
            numbers,
        )


# The two searched Balanced R-D settings (hparams_search/balanced_optuna.yaml), drawn as a contour.
CONTOUR_PARAMS = ("optimizer.balancer.gamma", "optimizer.balancer.w_lr")


def write_study_plots(
    study: optuna.Study, out: Path, contour: Sequence[str] = CONTOUR_PARAMS
) -> list[Path]:
    """PNG plots of ``study`` in ``out`` (optuna.visualization.matplotlib): the optimization
    history, the parameter importances and a contour of the ``contour`` pair. A plot the study
    cannot give yet (too few finished trials) is left out with a log line; the sweep's result
    never depends on it.

    Importances are the mean decrease in impurity of a random forest fitted to the trials
    (Optuna's ``MeanDecreaseImpurityImportanceEvaluator``, scikit-learn), drawn here: Optuna
    2.10's default, fANOVA, fails on the tree layout of current scikit-learn releases, and its
    matplotlib importance plot on current matplotlib (``cm.get_cmap``). The contour is drawn here
    too: Optuna 2.10's matplotlib contour gives a log-scale parameter reversed, wrong axis limits
    on current matplotlib (a gamma searched in 0.0011-0.0031 was drawn from 5.5e4 down to 9e3)."""
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        log.info("no study plots: no finished trial yet")
        return []
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    plots = {
        "optuna_history.png": lambda: optuna_plots.plot_optimization_history(study),
        "optuna_importance.png": lambda: importance_plot(study),
        "optuna_contour.png": lambda: contour_plot(study, contour),
    }
    written, verbosity = [], optuna.logging.get_verbosity()
    for name, draw in plots.items():
        # The matplotlib backend is "experimental" in optuna 2.10, and plot_contour logs that
        # its figure differs from the plotly one: neither is news to the reader of the sweep.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.logging.set_verbosity(optuna.logging.ERROR)
            try:
                axes = draw()
            except (ImportError, ValueError, RuntimeError) as error:
                log.info("no %s: %s", name, str(error).splitlines()[0] if str(error) else error)
                continue
            finally:
                optuna.logging.set_verbosity(verbosity)
        figure = np.ravel(axes)[0].figure
        figure.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(out / name)
    return written


def importance_plot(study: optuna.Study) -> Any:
    """Horizontal bars of the parameters' importances for the study's objective (the axes)."""
    import matplotlib.pyplot as plt
    from optuna.importance import MeanDecreaseImpurityImportanceEvaluator

    evaluator = MeanDecreaseImpurityImportanceEvaluator(seed=0)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    names = list(importances)[::-1]  # the most important on top
    # A pyplot figure, as optuna's own plots: write_study_plots closes them all alike.
    _, ax = plt.subplots(figsize=(6.4, 1.2 + 0.45 * len(names)))
    ax.barh(names, [importances[name] for name in names], color="C0")
    ax.set_xlabel("importance (mean decrease in impurity of a random forest)")
    ax.set_title("Hyperparameter importances")
    return ax


def _axis_range(values: np.ndarray, log: bool, pad: float = 0.05) -> tuple[float, float]:
    """The range of ``values`` widened by ``pad`` of its span on each side, measured in the
    axis's own scale (decades for a log axis); a single value gets +-10% (log: a factor 1.25)."""
    low, high = (
        (np.log10(values.min()), np.log10(values.max())) if log else (values.min(), values.max())
    )
    span = high - low
    margin = pad * span if span > 0 else (np.log10(1.25) if log else 0.1 * abs(low) or 0.1)
    low, high = low - margin, high + margin
    return (10**low, 10**high) if log else (low, high)


def _log_ticks(low: float, high: float) -> list[float]:
    """Tick values for a log axis from ``low`` to ``high``: the roundest mantissas that give at
    least three ticks (decades; 1-2-5; then finer), so that a span of under a decade is labelled
    at a few readable values instead of at every minor tick in scientific notation."""
    mantissas = ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
    mantissas += ((1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0),)
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    ticks: list[float] = []
    for subs in mantissas:
        ticks = [float(f"{m}e{e}") for e in decades for m in subs if low <= m * 10.0**e <= high]
        if len(ticks) >= 3:
            break
    return ticks


def _label_log_axis(axis: Any) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    low, high = sorted(axis.get_view_interval())
    axis.set_major_locator(FixedLocator(_log_ticks(low, high)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def contour_plot(study: optuna.Study, params: Sequence[str] = CONTOUR_PARAMS) -> Any:
    """The objective over the ``params`` pair (x, y) of the study's finished trials (the axes):
    the trials as points coloured by their value, with contours interpolated between them
    (linearly over a Delaunay triangulation in the axes' scales) once three of them span an area.
    A parameter searched on a log scale gets a log axis, labelled at a few plain values
    (:func:`_log_ticks`); both axes cover the trials' range."""
    import matplotlib.pyplot as plt
    from matplotlib.tri import Triangulation

    x_name, y_name = params
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if x_name in t.params and y_name in t.params and t.value is not None
    ]
    if not trials:
        raise ValueError(f"no finished trial has both {x_name} and {y_name}")
    x, y, z = (
        np.array(v, dtype=float)
        for v in zip(*((t.params[x_name], t.params[y_name], t.value) for t in trials), strict=True)
    )
    log_x, log_y = (_is_log(trials[0].distributions[name]) for name in params)
    # A pyplot figure, as optuna's own plots: write_study_plots closes them all alike.
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.set_xscale("log" if log_x else "linear")
    ax.set_yscale("log" if log_y else "linear")
    u, v = (np.log10(x) if log_x else x), (np.log10(y) if log_y else y)
    try:  # triangulated in the axes' scales, so that the contours follow what is drawn
        triangles = Triangulation(u, v).triangles
        levels = np.linspace(z.min(), z.max(), 13)  # the points' colour scale
        ax.tricontourf(Triangulation(x, y, triangles), z, levels, cmap="viridis", alpha=0.6)
    except (ValueError, RuntimeError):
        pass  # fewer than three points spanning an area, or one value: the points alone
    points = ax.scatter(x, y, c=z, cmap="viridis", edgecolors="black", zorder=3)
    fig.colorbar(points, ax=ax, label="objective value")
    ax.set_xlim(*_axis_range(x, log_x))
    ax.set_ylim(*_axis_range(y, log_y))
    for axis, log in ((ax.xaxis, log_x), (ax.yaxis, log_y)):
        if log:
            _label_log_axis(axis)
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title(f"Objective over {len(trials)} finished trials")
    return ax


def _is_log(distribution: Any) -> bool:
    """Whether a parameter was searched on a log scale (Optuna 2.10's distributions)."""
    return isinstance(
        distribution,
        (
            optuna.distributions.LogUniformDistribution,
            optuna.distributions.IntLogUniformDistribution,
        ),
    )


class StudyPlots(Callback):
    """Hydra callback of ``hparams_search=balanced_optuna``: at the end of the sweep, the plots
    of :func:`write_study_plots` for the whole study (resumed commands included) in the sweep
    folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
        out = Path(config.hydra.sweep.dir)
        out.mkdir(parents=True, exist_ok=True)
        written = write_study_plots(study, out)
        log.info("study plots: %s", ", ".join(str(p) for p in written) or "none yet")
