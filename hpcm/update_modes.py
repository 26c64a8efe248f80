"""Where the Balanced (FAMO) weight update gets its post-step losses: ``optimizer.update_mode``.

FAMO moves the task weights by the log-loss decrease of each task over one optimizer step,
``delta_i = log D_i(theta_t) - log D_i(theta_{t+1})`` (``hpcm.optim.famo``). Three ways to measure
it, from the reference's to one that costs nothing:

``exact`` (default)
    The same batch again under ``no_grad`` with the same quantization noise (the RNG state of the
    step's forward is replayed), as FAMO's official trainers do: one extra forward per step.
``subbatch``
    The same, on the first ``subbatch_size`` images of the batch only, against the pre-step
    losses of the same images (per-image losses from the step's own forward output). The noise
    of the full-batch forward is reproduced for those images. Cost: ``subbatch_size / batch``
    of a forward.
``next_batch``
    No extra forward (spec, recommendation iii): an exponential moving average ``m`` of the
    pre-step log-losses ``log D_i`` of successive batches, and ``delta = m_{t-1} - m_t``. For a
    loss falling by ``r`` per step the difference of the averages is ``r`` (the average lags by
    ``decay / (1 - decay)`` steps, the same at both ends) while the batch-to-batch scatter of
    the losses is damped by ``1 - decay``. It sees the decrease on new images rather than on the
    batch just trained on, one step late (the update after step ``t`` sees the losses up to
    ``theta_t``), and a fresh average needs about ``1 / (1 - decay)`` steps to settle, so the
    first ``exact_warmup_steps`` updates are exact ones (which also fill the average). It
    approximates ``exact``; ``tests/test_update_modes.py`` bounds the difference of the weight
    trajectories.

Every mode gives its losses to the balancer, whose ``reduce_fn`` averages them over DDP ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import Tensor

from hpcm import model as model_module
from hpcm.losses import RateDistortionLoss
from hpcm.metrics import MAX_8BIT, iter_likelihoods, ms_ssim
from hpcm.optim import FAMOWeighting

UPDATE_MODES = ("exact", "subbatch", "next_batch")
Forward = Callable[[Tensor], Mapping[str, Any]]
TaskFn = Callable[[Mapping[str, Tensor], Mapping[str, Any], Tensor], Tensor]


# ----------------------------------------------------------------------------- per-image losses
def per_image_task_losses(
    criterion: RateDistortionLoss, output: Mapping[str, Any], target: Tensor
) -> Tensor:
    """``[distortion, bpp_loss]`` of every image, shape ``(B, 2)``; their mean over the batch is
    ``criterion(output, target)``'s task-loss vector (images of one size)."""
    x_hat = output["x_hat"]
    batch, _, height, width = target.shape
    bits = torch.zeros(batch, dtype=torch.float32, device=target.device)
    for _, likelihoods in iter_likelihoods(output["likelihoods"]):
        bits = bits + torch.log(likelihoods).flatten(1).sum(1) / -math.log(2.0)
    bpp = bits / (height * width)
    if criterion.metric == "mse":
        mse = (x_hat - target).pow(2).flatten(1).mean(1)
        distortion = criterion.lmbda * MAX_8BIT**2 * mse
    else:
        similarity = torch.stack(
            [ms_ssim(x_hat[i : i + 1], target[i : i + 1]) for i in range(batch)]
        )
        distortion = criterion.lmbda * (1.0 - similarity)
    return torch.stack([distortion.to(bpp.dtype), bpp], dim=1)


def head(output: Mapping[str, Any], count: int) -> dict[str, Any]:
    """``x_hat`` and the likelihoods of the first ``count`` images of a model output."""

    def cut(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value[:count]
        if isinstance(value, Mapping):
            return {key: cut(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(cut(item) for item in value)
        return value

    return {"x_hat": cut(output["x_hat"]), "likelihoods": cut(output["likelihoods"])}


def _memory_format(x: Tensor) -> torch.memory_format:
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


@contextmanager
def full_batch_noise(batch_size: int) -> Iterator[None]:
    """Within the block, the model's training noise for a batch of fewer than ``batch_size``
    images is the first images' part of noise drawn for ``batch_size`` images: after the RNG
    is replayed, a sub-batch gets exactly the noise its images had in the full batch."""
    original = model_module._add_noise

    def add_noise(x: Tensor) -> Tensor:
        if x.shape[0] >= batch_size:
            return original(x)
        shape = (batch_size, *x.shape[1:])
        noise = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
        return x + noise.uniform_(-0.5, 0.5)[: x.shape[0]]

    model_module._add_noise = add_noise
    try:
        yield
    finally:
        model_module._add_noise = original


# ----------------------------------------------------------------------------- the modes
class PostStepUpdate:
    """One FAMO weight update per (finite) training step, after the optimizer step."""

    name = "base"

    def update(
        self,
        balancer: FAMOWeighting,
        criterion: RateDistortionLoss,
        x: Tensor,
        output: Mapping[str, Any],
        forward: Forward,
        replay: AbstractContextManager[Any],
        tasks: TaskFn | None = None,
    ) -> None:
        """Args:
        balancer: the FAMO weighting whose ``combine`` gave this step's objective.
        criterion: the rate-distortion loss.
        x: the batch (on the device).
        output: the step's model output (pre-step parameters).
        forward: the model forward to re-evaluate with (no DDP wrapper, autocast as the step).
        replay: a context manager that replays the RNG state of the step's forward.
        tasks: ``tasks(losses, output, x)`` -> the task-loss vector the balancer weighs
            (default ``criterion.task_losses(losses)``).
        """
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state


class ExactUpdate(PostStepUpdate):
    """The same batch again with the same noise (the reference method)."""

    name = "exact"

    def update(
        self,
        balancer: FAMOWeighting,
        criterion: RateDistortionLoss,
        x: Tensor,
        output: Mapping[str, Any],
        forward: Forward,
        replay: AbstractContextManager[Any],
        tasks: TaskFn | None = None,
    ) -> None:
        with torch.no_grad(), replay:
            out = forward(x)
            losses = criterion(out, x)
            after = criterion.task_losses(losses) if tasks is None else tasks(losses, out, x)
        balancer.update(after)


class SubBatchUpdate(PostStepUpdate):
    """The first ``size`` images again with their noise, against their own pre-step losses."""

    name = "subbatch"

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"optimizer.subbatch_size must be >= 1, got {size}")
        self.size = size

    def update(
        self,
        balancer: FAMOWeighting,
        criterion: RateDistortionLoss,
        x: Tensor,
        output: Mapping[str, Any],
        forward: Forward,
        replay: AbstractContextManager[Any],
        tasks: TaskFn | None = None,
    ) -> None:
        # [distortion, bpp_loss] only (``tasks`` is not used; the trainer checks the task set)
        count = min(self.size, x.shape[0])
        part = x[:count]
        with torch.no_grad():
            before = per_image_task_losses(criterion, head(output, count), part).mean(0)
            with replay, full_batch_noise(x.shape[0]):
                out = forward(part)
            after = per_image_task_losses(criterion, out, part).mean(0)
        balancer.update(after, losses_before=before)


class NextBatchUpdate(PostStepUpdate):
    """No extra forward: ``delta`` from a moving average of successive pre-step log-losses."""

    name = "next_batch"

    def __init__(self, decay: float, exact_warmup_steps: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"optimizer.ema_decay must be in [0, 1), got {decay}")
        if exact_warmup_steps < 0:
            raise ValueError("optimizer.exact_warmup_steps must be >= 0")
        self.decay = decay
        self.exact_warmup_steps = exact_warmup_steps
        self.average: Tensor | None = None
        self.steps = 0  # updates so far, exact warm-up included
        self._exact = ExactUpdate()

    def observe(self, balancer: FAMOWeighting, losses: Tensor, apply: bool = True) -> None:
        """One step from already reduced pre-step losses (the core of :meth:`update`); with
        ``apply=False`` the average is updated but not the weights."""
        logs = torch.log(
            losses.detach().float() - balancer.min_losses.to(losses.device) + balancer.eps
        )
        if self.average is None:  # the first step only starts the average
            self.average = logs.clone()
            return
        self.average = self.average.to(logs.device)
        average = torch.lerp(self.average, logs, 1.0 - self.decay)
        ok = torch.isfinite(average).all()
        delta = torch.where(ok, self.average - average, torch.full_like(average, math.nan))
        self.average = torch.where(ok, average, self.average)
        if apply:
            balancer.update_delta(delta)  # a NaN delta is skipped and counted there

    def update(
        self,
        balancer: FAMOWeighting,
        criterion: RateDistortionLoss,
        x: Tensor,
        output: Mapping[str, Any],
        forward: Forward,
        replay: AbstractContextManager[Any],
        tasks: TaskFn | None = None,
    ) -> None:
        losses = balancer.last_losses
        if losses is None:
            raise RuntimeError("next_batch update before any combine() call")
        warmup = self.steps < self.exact_warmup_steps
        if warmup:
            self._exact.update(balancer, criterion, x, output, forward, replay, tasks)
        self.observe(balancer, losses, apply=not warmup)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        average = None if self.average is None else self.average.clone()
        return {"average": average, "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        average = state.get("average")
        self.average = None if average is None else torch.as_tensor(average).clone()
        self.steps = int(state.get("steps", 0))


def build_post_step(optimizer_cfg: Mapping[str, Any]) -> PostStepUpdate:
    """The mode of an ``optimizer`` config group (``update_mode``, ``subbatch_size``,
    ``ema_decay``, ``exact_warmup_steps``); ``ValueError`` for an unknown mode or a bad value."""
    mode = str(optimizer_cfg.get("update_mode") or "exact")
    if mode == "exact":
        return ExactUpdate()
    if mode == "subbatch":
        return SubBatchUpdate(int(optimizer_cfg.get("subbatch_size", 2)))
    if mode == "next_batch":
        return NextBatchUpdate(
            float(optimizer_cfg.get("ema_decay", 0.9)),
            int(optimizer_cfg.get("exact_warmup_steps", 0)),
        )
    raise ValueError(
        f"unknown optimizer.update_mode {mode!r}; choose from {', '.join(UPDATE_MODES)}"
    )
