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
    matplotlib importance plot on current matplotlib (``cm.get_cmap``)."""
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        log.info("no study plots: no finished trial yet")
        return []
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    plots = {
        "optuna_history.png": lambda: optuna_plots.plot_optimization_history(study),
        "optuna_importance.png": lambda: importance_plot(study),
        "optuna_contour.png": lambda: optuna_plots.plot_contour(study, params=list(contour)),
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
