"""Optuna pieces of the hyper-parameter search (``hparams_search=balanced_optuna``): the
resumable seeded sampler and the callback that fails the trials of a killed command."""

from __future__ import annotations

import logging
from typing import Any

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
