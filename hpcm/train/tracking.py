"""Experiment tracking: metrics to a JSON-lines file in the run directory and, optionally, wandb.

Every record is ``{"step": global_step, "epoch": epoch, "<split>/<name>": value, ...}`` with the
metric names of the training suite (``train/loss``, ``test/psnr``, ...). The JSON-lines file is
always written; wandb runs offline by default (no account, no network) and keeps its files in
the run directory.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from hpcm.run_layout import METRICS_FILE, RunDirError, read_metrics

if TYPE_CHECKING:
    from torch import Tensor


class MetricsFile:
    """Appends one JSON object per line; on resume drops the lines after the resumed step."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            self._truncate_after(resume_step)
        self._file = self.path.open("a", encoding="utf-8")

    def _truncate_after(self, step: int) -> None:
        # Records of the epoch that was interrupted would otherwise appear twice.
        try:
            records = read_metrics(self.path)
        except RunDirError:  # not one complete record
            records = []
        kept = [json.dumps(r) for r in records if r.get("step", 0) <= step]
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        # JSON has no NaN/inf: write them as strings so that every line stays valid JSON.
        clean = {
            k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MetricWindow:
    """On-device sums of per-step metric vectors, read back once per logging window.

    ``add(values)`` takes a finite step's vector (``names`` order), ``skip()`` counts a skipped
    batch; ``flush(mean)`` returns ``{"train/<name>": mean}`` over the finite steps (``mean``
    reduces the sums, e.g. over DDP ranks) and starts a new window.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._sums: Tensor | None = None
        self.steps = 0  # finite steps in the window
        self.batches = 0  # all batches in the window, skipped ones included

    def add(self, values: Tensor) -> None:
        self._sums = values if self._sums is None else self._sums + values
        self.steps += 1
        self.batches += 1

    def skip(self) -> None:
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        """The open window (a run saved mid-epoch logs the same means when resumed)."""
        sums = None if self._sums is None else self._sums.detach().cpu()
        return {"sums": sums, "steps": self.steps, "batches": self.batches}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._sums, self.steps, self.batches = state["sums"], state["steps"], state["batches"]

    def flush(self, mean: Any) -> dict[str, float]:
        record: dict[str, float] = {}
        if self.steps:
            means = (mean(self._sums) / self.steps).tolist()  # one sync per window
            record = {f"train/{n}": v for n, v in zip(self.names, means, strict=True)}
        self._sums, self.steps, self.batches = None, 0, 0
        return record


class Tracker:
    """Sends metrics to ``RUN_DIR/metrics.jsonl`` and to an experiment tracker's run, if any.

    Args:
        run_dir: the run directory.
        resume_step: global step of the checkpoint a resumed run starts from.
        logger_run: the run of the ``logger`` config group (a wandb run: ``log``, ``finish``,
            ``id``), or None (``logger=none``).
    """

    def __init__(
        self, run_dir: str | os.PathLike, resume_step: int | None = None, logger_run: Any = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.file = MetricsFile(self.run_dir / METRICS_FILE, resume_step)
        self._logger_run = logger_run

    @classmethod
    def for_run(
        cls, cfg: Any, run_dir: Path, resume_step: int | None, run_id: str | None
    ) -> Tracker:
        """The tracker of a training run with the composed config ``cfg``: its ``logger``
        group (a ``_target_`` called with the run directory, the resolved config, the run's
        name and the id of the run it continues)."""
        resolved = OmegaConf.to_container(cfg, resolve=True)
        start = instantiate(cfg.logger, _convert_="all")
        return cls(run_dir, resume_step, start(Path(run_dir), resolved, run_name(resolved), run_id))

    @property
    def run_id(self) -> str | None:
        """The wandb run id (stored in checkpoints so that a resumed run continues it)."""
        return None if self._logger_run is None else self._logger_run.id

    def log(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        self.file.write({"step": step, "epoch": epoch, **metrics})
        if self._logger_run is not None:
            self._logger_run.log({**metrics, "epoch": epoch}, step=step)

    def close(self) -> None:
        self.file.close()
        if self._logger_run is not None:
            self._logger_run.finish()
            self._logger_run = None


def run_name(cfg: Mapping[str, Any]) -> str:
    """Display name of a run: MODEL_OPTIMIZER_METRIC_LAMBDA, and the balancer's ``gamma`` and
    ``w_lr`` when it has them, so that the trials of a search tell themselves apart."""
    name = f"{cfg['model']['name']}_{cfg['optimizer']['name']}_{cfg['metric']}_{cfg['lmbda']}"
    balancer = cfg["optimizer"].get("balancer") or {}
    for key, short in (("gamma", "g"), ("w_lr", "wlr")):
        if balancer.get(key) is not None:
            name += f"_{short}{balancer[key]:.3g}"
    return name


def no_logger(
    run_dir: Path, config: Mapping[str, Any], run_name: str, run_id: str | None, **settings: Any
) -> None:
    """``logger=none``: no tracker run. ``settings`` are logger keys other presets set for
    wandb (a sweep's ``logger.group``), which mean nothing here."""


def start_wandb(
    run_dir: Path,
    config: Mapping[str, Any],
    run_name: str,
    run_id: str | None,
    *,
    mode: str,
    project: str | None,
    entity: str | None,
    dir: str | None,
    group: str | None,
    tags: list[str],
):
    """``logger=wandb``: a wandb run of this training run (continuing ``run_id`` when given),
    its files under ``dir`` or else the run directory; the keys are those of
    ``conf/logger/wandb.yaml``."""
    import wandb  # imported here: a slow import that logger=none runs do not need

    if mode not in ("offline", "online", "disabled"):
        raise ValueError(f"unknown logger.mode {mode!r}; choose from offline, online, disabled")
    wandb_dir = Path(dir or run_dir)  # files go to WANDB_DIR/wandb or RUN_DIR/wandb
    wandb_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=project,
        entity=entity,
        group=group,
        tags=list(tags),
        name=run_name,
        dir=str(wandb_dir),
        mode=mode,
        config=dict(config),
        id=run_id,
        resume="allow" if run_id else None,
    )
