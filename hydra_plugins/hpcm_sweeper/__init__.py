"""The Optuna sweeper of ``hparams_search=...`` (config ``hydra/sweeper=optuna_search``): Hydra's
Optuna sweeper (hydra-optuna-sweeper 1.3), ending a study that holds no completed trial with one
line and exit status 1 instead of Optuna's ``ValueError: Record does not exist`` (the sweeper
asks the study for its best trial once its trials have run).

Hydra instantiates a sweeper only from a class defined under the ``hydra_plugins`` namespace
(``hydra.core.plugins.Plugins``), hence this package beside ``hpcm``; ``hpcm.train.cli``
registers the class, which Hydra's scan does not find in an editable install.
"""

from __future__ import annotations

from typing import Any

from hydra.errors import CompactHydraException
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig


class NoTrialCompleted(CompactHydraException):
    """A search whose study holds no completed trial. Hydra prints the message alone (the whole
    traceback with ``HYDRA_FULL_ERROR=1``) and exits with status 1."""


class OptunaSearchSweeper(OptunaSweeper):
    """Hydra's ``OptunaSweeper``; a study left without a completed trial (every trial failed, in
    this command and any before it) raises :class:`NoTrialCompleted`. Needs a storage and a
    study name to look the study up: without them (an in-memory study) Optuna's error stands."""

    def __init__(self, *, storage: Any, study_name: str | None, **kwargs: Any) -> None:
        super().__init__(storage=storage, study_name=study_name, **kwargs)
        self.storage, self.study_name = storage, study_name
        self.sweep_dir = ""

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweep_dir = str(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> None:
        try:
            super().sweep(arguments)
        except ValueError:  # Optuna's "Record does not exist" when there is no best trial
            if not (self.storage and self.study_name):
                raise
            # Imported here, as the plugin imports its implementation: every train.py command
            # loads this module, and Optuna (with SQLAlchemy) is for searches only.
            import optuna
            from optuna.trial import TrialState

            study = optuna.load_study(study_name=self.study_name, storage=self.storage)
            states = [t.state for t in study.get_trials(deepcopy=False)]
            if TrialState.COMPLETE in states:
                raise
            raise NoTrialCompleted(
                f"no trial completed: study {self.study_name} holds "
                f"{states.count(TrialState.FAIL)} failed trial(s) and no result; each failure's "
                f"error is logged above ('Failed experiment') and in {self.sweep_dir}"
            ) from None
