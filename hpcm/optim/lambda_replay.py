"""Plain training on another run's trade-off trajectory: the control twin of an adaptive run.

With two tasks ``[distortion, rate]`` any balancer's step is, up to a positive factor, the plain
step of ``R + lambda_eff(t) D'`` (``D' = 255^2 MSE``; :func:`hpcm.train.losses.effective_lambda`):
an adaptive weighting is a schedule of the trade-off. :class:`LambdaReplayBalancer` trains with
the plain form ``R + lambda_eff(t) * 255^2 * MSE`` (weights ``[lambda_eff(t) / lambda, 1]`` on
``[distortion, bpp_loss]``, with ``distortion = lambda * 255^2 * MSE``), ``lambda_eff(t)`` read
from the ``train/effective_lambda`` series that a source run logged in its ``metrics.jsonl``.
A FAMO run and its replay then differ only in where the trade-off came from: FAMO's loss
feedback, or a recording of it.

Each logged record is the mean over the steps since the previous record; it is placed at the
middle of those steps and the trajectory is interpolated linearly in ``log lambda`` between
records (held flat before the first middle and after the last). A step past the source's last
logged step is an error: the source is shorter than this run. A source given as a run directory
must have finished (its ``finished.json``), so that a twin never starts on the first part of a
trajectory still being written; give the ``metrics.jsonl`` file itself to replay an unfinished
run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hpcm.run_layout import FINISHED, RunDirError, read_metrics, series

ReduceFn = Callable[[Tensor], Tensor]

SERIES = "train/effective_lambda"


def read_trajectory(source: str | Path) -> tuple[list[float], list[float], int]:
    """``(steps, lambdas, last_step)`` of the effective-lambda series of a run directory (or its
    ``metrics.jsonl``): window middles, the logged means, and the last logged step. A record
    logged again after a resume replaces the earlier one of the same step."""
    try:
        ends, values = series(read_metrics(source), SERIES)
    except RunDirError as error:
        raise ValueError(f"optimizer.balancer.source: {error}") from None
    if not ends:
        raise ValueError(f"optimizer.balancer.source: {source} logs no {SERIES} series")
    by_step = dict(zip(ends, values, strict=True))
    bad = [s for s in ends if by_step[s] <= 0]
    if bad:
        raise ValueError(f"optimizer.balancer.source: {SERIES} is not positive at step {bad[0]}")
    middles, start = [], 0
    for end in ends:  # the record at ``end`` averages steps start .. end - 1
        middles.append(0.5 * (start + end - 1))
        start = end
    return middles, [by_step[s] for s in ends], ends[-1]


def interpolate_log(steps: Sequence[float], values: Sequence[float], step: float) -> float:
    """Linear interpolation of ``log(values)`` at ``step``, held flat outside ``steps``."""
    if step <= steps[0]:
        return values[0]
    if step >= steps[-1]:
        return values[-1]
    hi = next(i for i, s in enumerate(steps) if s >= step)
    lo = hi - 1
    t = (step - steps[lo]) / (steps[hi] - steps[lo])
    return math.exp((1.0 - t) * math.log(values[lo]) + t * math.log(values[hi]))


class LambdaReplayBalancer:
    """The plain step ``R + lambda_eff(t) * 255^2 * MSE`` with ``lambda_eff(t)`` the source run's
    logged effective lambda at this step.

    Args:
        task_names: must be ``("distortion", "bpp_loss")`` (``optimizer.tasks=rd``).
        source: the source run's directory (finished) or its ``metrics.jsonl``.
        lmbda: this run's nominal lambda (the ``distortion`` task is ``lmbda * 255^2 * MSE``).
        reduce_fn: unused (every rank reads the same trajectory).
    """

    def __init__(
        self,
        task_names: Sequence[str],
        source: str,
        lmbda: float,
        reduce_fn: ReduceFn | None = None,
    ) -> None:
        del reduce_fn
        self.task_names = tuple(task_names)
        if self.task_names != ("distortion", "bpp_loss"):
            raise ValueError("lambda_replay replays one trade-off: use optimizer.tasks=rd")
        if not source:
            raise ValueError("lambda_replay needs optimizer.balancer.source=RUN_DIR")
        if not lmbda > 0:
            raise ValueError(f"lambda_replay needs a positive lambda, got {lmbda}")
        self.source = str(source)
        if Path(self.source).is_dir() and not (Path(self.source) / FINISHED).is_file():
            raise ValueError(
                f"lambda_replay: the source run {self.source} has not finished (no {FINISHED}): "
                "finish it first, or give its metrics.jsonl to replay what it logged so far"
            )
        self.lmbda = float(lmbda)
        self.steps, self.lambdas, self.last_step = read_trajectory(self.source)
        self.step = 0  # steps taken (skipped batches included, as the loop's global step)
        self.applied_weights = torch.ones(2)

    def lambda_at(self, step: int) -> float:
        """The source's effective lambda at ``step`` (0-based); ValueError past its end."""
        if step >= self.last_step:
            raise ValueError(
                f"lambda_replay: the source {self.source} logged {self.last_step} steps, this "
                f"run needs step {step + 1}"
            )
        return interpolate_log(self.steps, self.lambdas, float(step))

    def backward(self, task_losses: Tensor, params: Sequence[Tensor]) -> Tensor:
        del params
        ratio = self.lambda_at(self.step) / self.lmbda
        self.step += 1
        weights = torch.tensor([ratio, 1.0], dtype=task_losses.dtype, device=task_losses.device)
        self.applied_weights = weights
        objective = (weights * task_losses).sum()
        objective.backward()
        return objective.detach()

    def after_step(self, probe: Any) -> None:
        del probe

    def report(self) -> dict[str, float]:
        return {"replayed_lambda": self.lambda_at(max(self.step - 1, 0))}

    def state_dict(self) -> dict[str, Any]:
        return {"step": torch.tensor(self.step)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
