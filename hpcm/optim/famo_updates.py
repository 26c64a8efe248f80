"""Where FAMO's weight update gets its post-step losses (``optimizer.balancer.update_mode``).

FAMO moves the task weights by the log-loss decrease of each task over one optimizer step,
``delta_i = log D_i(theta_t) - log D_i(theta_{t+1})`` (:mod:`hpcm.optim.famo`). Three ways to
measure it, from the reference's to one that costs nothing; the re-evaluations themselves are
the training loop's (a :class:`hpcm.optim.balancer.StepProbe`), so nothing here runs a model:

``exact``
    The same batch again under ``no_grad``, as FAMO's official trainers do: one extra forward
    per step.
``subbatch``
    The same, on the first ``subbatch_size`` images of the batch only, against the pre-step
    losses of the same images. Cost: ``subbatch_size / batch`` of a forward.
``next_batch``
    No extra forward: an exponential moving average ``m`` of the pre-step log-losses ``log D_i``
    of successive batches, and ``delta = m_{t-1} - m_t``. For a loss falling by ``r`` per step
    the difference of the averages is ``r`` (the average lags by ``decay / (1 - decay)`` steps,
    the same at both ends) while the batch-to-batch scatter of the losses is damped by
    ``1 - decay``. It sees the decrease on new images rather than on the batch just trained on,
    one step late, and a fresh average needs about ``1 / (1 - decay)`` steps to settle, so the
    first ``exact_warmup_steps`` updates are exact ones (which also fill the average).
    ``tests/test_update_modes.py`` bounds its difference from ``exact``.

The re-evaluations draw their quantization noise as ``post_step_noise`` says: ``fresh`` (new
noise, as the Balanced R-D reference code's re-run in training mode does: ``delta`` then mixes
the parameter update with the change of noise) or ``replay`` (the step's own noise: ``delta``
measures the parameter update alone).

Every mode hands its losses to the :class:`FAMOWeighting`, whose ``reduce_fn`` averages them
over data-parallel ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from hpcm.optim.famo import FAMOWeighting

UPDATE_MODES = ("exact", "subbatch", "next_batch")
POST_STEP_NOISE = ("fresh", "replay")


class ExactUpdate:
    """The same batch again (the reference method); ``fresh``: with new quantization noise."""

    name = "exact"
    fresh = True

    def __call__(self, famo: FAMOWeighting, probe: Any) -> None:
        famo.update(probe.losses_after(fresh=self.fresh))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state


class SubBatchUpdate(ExactUpdate):
    """The first ``size`` images again with their noise, against their own pre-step losses."""

    name = "subbatch"

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"optimizer.balancer.subbatch_size must be >= 1, got {size}")
        self.size = size

    def __call__(self, famo: FAMOWeighting, probe: Any) -> None:
        before, after = probe.subbatch_losses(self.size, fresh=self.fresh)
        famo.update(after, losses_before=before)


class NextBatchUpdate(ExactUpdate):
    """No extra forward: ``delta`` from a moving average of successive pre-step log-losses."""

    name = "next_batch"

    def __init__(self, decay: float, exact_warmup_steps: int) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"optimizer.balancer.ema_decay must be in [0, 1), got {decay}")
        if exact_warmup_steps < 0:
            raise ValueError("optimizer.balancer.exact_warmup_steps must be >= 0")
        self.decay = decay
        self.exact_warmup_steps = exact_warmup_steps
        self.average: Tensor | None = None
        self.steps = 0  # updates so far, exact warm-up included

    def observe(self, famo: FAMOWeighting, losses: Tensor, apply: bool = True) -> None:
        """One step from already reduced pre-step losses (the core of a call); with
        ``apply=False`` the average is updated but not the weights."""
        logs = torch.log(losses.detach().float() - famo.min_losses.to(losses.device) + famo.eps)
        if self.average is None:  # the first step only starts the average
            self.average = logs.clone()
            return
        self.average = self.average.to(logs.device)
        average = torch.lerp(self.average, logs, 1.0 - self.decay)
        ok = torch.isfinite(average).all()
        delta = torch.where(ok, self.average - average, torch.full_like(average, math.nan))
        self.average = torch.where(ok, average, self.average)
        if apply:
            famo.update_delta(delta)  # a NaN delta is skipped and counted there

    def __call__(self, famo: FAMOWeighting, probe: Any) -> None:
        losses = famo.last_losses
        if losses is None:
            raise RuntimeError("next_batch update before any combine() call")
        warmup = self.steps < self.exact_warmup_steps
        if warmup:
            super().__call__(famo, probe)
        self.observe(famo, losses, apply=not warmup)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        average = None if self.average is None else self.average.clone()
        return {"average": average, "steps": torch.tensor(self.steps)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        average = state.get("average")
        self.average = None if average is None else torch.as_tensor(average).clone()
        self.steps = int(state.get("steps", 0))


def build_famo_update(
    mode: str,
    subbatch_size: int,
    ema_decay: float,
    exact_warmup_steps: int,
    post_step_noise: str = "fresh",
) -> ExactUpdate:
    """The update of ``mode`` whose re-evaluations draw ``post_step_noise``; ``ValueError`` for
    an unknown mode or a bad value."""
    if post_step_noise not in POST_STEP_NOISE:
        raise ValueError(
            f"unknown optimizer.balancer.post_step_noise {post_step_noise!r}; choose from "
            f"{', '.join(POST_STEP_NOISE)}"
        )
    if mode == "exact":
        update = ExactUpdate()
    elif mode == "subbatch":
        update = SubBatchUpdate(int(subbatch_size))
    elif mode == "next_batch":
        update = NextBatchUpdate(float(ema_decay), int(exact_warmup_steps))
    else:
        raise ValueError(
            f"unknown optimizer.balancer.update_mode {mode!r}; choose from "
            f"{', '.join(UPDATE_MODES)}"
        )
    update.fresh = post_step_noise == "fresh"
    return update
