"""The files of a training run directory, their names and their one reader each.

A run directory (``paths.run_dir``; one per job of a sweep) holds:

- ``config.yaml``: the resolved configuration, written before the run starts (:func:`read_config`);
- ``metrics.jsonl``: one JSON object per logging window, ``{"step": ..., "epoch": ...,
  "train/loss": ..., "test/psnr": ...}``; non-finite values are written as strings, and a line
  cut by an interruption may end the file (:func:`read_metrics`, :func:`series`);
- ``epoch_best.pth.tar``, ``last.pth.tar``, ``epoch_N.pth.tar``: training checkpoints (the best
  validation loss, the latest state, every ``trainer.save_every_n_epochs``), and beside them
  ``balanced_state_best.pth`` / ``balanced_state_N.pth``, the balancer's state alone;
- ``finished.json``: written when the run trained all its epochs (:func:`mark_finished`), so that
  a re-launched sweep skips it.

Standard library and PyYAML only, so that every layer (train writes, eval and the plotting
commands read) may import it without torch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hpcm.files import atomic_write

CONFIG = "config.yaml"
METRICS_FILE = "metrics.jsonl"
LAST_CHECKPOINT = "last.pth.tar"
BEST_CHECKPOINT = "epoch_best.pth.tar"
BEST_BALANCED_STATE = "balanced_state_best.pth"
FINISHED = "finished.json"
# The checkpoints that stand for a run directory (evaluation, export), in order of preference.
RUN_CHECKPOINTS = (BEST_CHECKPOINT, LAST_CHECKPOINT)
# What marks a directory as a started run: its resolved config, or Hydra's own folder.
RUN_MARKERS = (CONFIG, ".hydra")
# The weights a balancer applied to each task loss in the model step: WEIGHT_PREFIX + task name
# (e.g. ``bpp``).
WEIGHT_PREFIX = "train/task_weight_"


class RunDirError(Exception):
    """A run directory without the file asked for; the message is one line."""


def epoch_checkpoint(epoch: int) -> str:
    """The name of the periodic checkpoint written after ``epoch``."""
    return f"epoch_{epoch}.pth.tar"


def epoch_balanced_state(epoch: int) -> str:
    """The name of the balancer's state written beside :func:`epoch_checkpoint`."""
    return f"balanced_state_{epoch}.pth"


def run_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint that stands for a run directory: the best one, else the last one; ``None``
    if it holds neither."""
    for name in RUN_CHECKPOINTS:
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config of ``run_dir`` as plain data (``{}`` if the file holds no mapping),
    or ``None`` when the run has no ``config.yaml``."""
    path = run_dir / CONFIG
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    return config if isinstance(config, dict) else {}


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``: ``path`` is a run directory or the file itself. A line
    cut by an interruption is left out; a missing or empty file is a :class:`RunDirError`."""
    path = Path(path)
    file = path if path.is_file() else path / METRICS_FILE
    if not file.is_file():
        raise RunDirError(f"{path}: no {METRICS_FILE}")
    records = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by an interruption
            continue
    if not records:
        raise RunDirError(f"{file}: no records")
    return records


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and finite values of ``key`` (non-finite values are stored as strings), in step
    order; a step logged twice (a run resumed from an earlier checkpoint) keeps its last value."""
    points = {
        r["step"]: float(r[key])
        for r in records
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    }
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def last_validation_record(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's last logged validation record (``test/...`` metrics), in logging order (after
    a resume, the latest), or None when it logged none."""
    return next((r for r in reversed(records) if "test/bpp_loss" in r), None)


def mark_finished(run_dir: Path, epochs: int, best_loss: float) -> None:
    """Record that the run in ``run_dir`` trained ``epochs`` epochs (atomic write)."""
    best = best_loss if math.isfinite(best_loss) else None  # JSON has no NaN
    text = json.dumps({"epochs": epochs, "best_loss": best}) + "\n"
    atomic_write(run_dir / FINISHED, text.encode("utf-8"))


def finished_result(run_dir: Path, epochs: int) -> float | None:
    """The best loss of a run in ``run_dir`` that trained ``epochs`` epochs or more, else None
    (not finished, or a longer run is asked for)."""
    try:
        done = json.loads((run_dir / FINISHED).read_text(encoding="utf-8"))
        if int(done["epochs"]) < epochs:
            return None
        return math.nan if done["best_loss"] is None else float(done["best_loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
