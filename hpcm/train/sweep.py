"""Optuna pieces of the hyper-parameter search (``hparams_search=balanced_optuna``)."""

from __future__ import annotations

from typing import Any

import optuna


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
