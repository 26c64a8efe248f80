"""Post-step re-evaluations of a training batch: the :class:`hpcm.optim.balancer.StepProbe` the
training loop hands to its balancer after the optimizer step.

A balancer that wants the losses after the step (FAMO's weight update, see
:mod:`hpcm.optim.famo_updates`) asks this object; a balancer that does not ask costs nothing but
the RNG state saved before the step's forward. The re-evaluations run under ``no_grad`` with
either the step's own quantization noise (the RNG replayed to that state) or fresh noise (the RNG
seeded from the probe's ``fresh_seed``, a function of the run's seed and step, so a resumed run
draws the same); either way the noise stream of the training steps is neither changed nor
consumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from hpcm.codec.model import HPCM
from hpcm.train.losses import RateDistortionLoss

RngState = dict[str, Tensor | None]


def rng_state(device: torch.device) -> RngState:
    """The global RNG state that draws quantization noise on ``device`` (plus the CPU's)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: Mapping[str, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextmanager
def replay_rng(state: Mapping[str, Tensor | None], device: torch.device) -> Iterator[None]:
    """Run a block with the RNG at ``state``; afterwards the RNG continues where it was, so a
    replayed forward neither changes nor consumes the noise stream of the training steps."""
    saved = rng_state(device)
    set_rng_state(state, device)
    try:
        yield
    finally:
        set_rng_state(saved, device)


def head(output: Mapping[str, Any], count: int) -> dict[str, Any]:
    """``x_hat``, the likelihoods and the scale map of the first ``count`` images of an output."""

    def cut(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value[:count]
        if isinstance(value, Mapping):
            return {key: cut(item) for key, item in value.items()}
        return value

    return {
        "x_hat": cut(output["x_hat"]),
        "likelihoods": cut(output["likelihoods"]),
        "y_scale_map": output["y_scale_map"],
    }


class BatchProbe:
    """Re-evaluates the batch ``x`` of one step with the updated parameters.

    Args:
        model: the bare model (owns the quantization noise: ``model.noise.of_batch``).
        forward: the no-grad forward to re-evaluate with (compiled, autocast as the step; never
            the DDP wrapper).
        criterion: the rate-distortion loss.
        task_names: the task losses the balancer weighs.
        x: the step's batch; ``output``: the step's model output (pre-step parameters).
        noise: the RNG state before the step's forward; ``device``: where the noise is drawn.
        fresh_seed: the seed of the noise of a ``fresh=True`` re-evaluation.
    """

    def __init__(
        self,
        model: HPCM,
        forward: Callable[[Tensor], dict[str, Any]],
        criterion: RateDistortionLoss,
        task_names: tuple[str, ...],
        x: Tensor,
        output: Mapping[str, Any],
        noise: RngState,
        device: torch.device,
        fresh_seed: int = 0,
    ) -> None:
        self.model, self.forward, self.criterion = model, forward, criterion
        self.task_names, self.x, self.output = task_names, x, output
        self.noise, self.device, self.fresh_seed = noise, device, fresh_seed

    @contextmanager
    def _noise(self, fresh: bool) -> Iterator[None]:
        """The step's noise, or (``fresh``) noise seeded from ``fresh_seed``; the training
        stream continues afterwards as if nothing had been drawn."""
        with replay_rng(self.noise, self.device):
            if fresh:
                torch.manual_seed(self.fresh_seed)
            yield

    @torch.no_grad()
    def losses_after(self, fresh: bool = False) -> Tensor:
        with self._noise(fresh):
            out = self.forward(self.x)
        return self.criterion.task_losses(self.criterion(out, self.x), out, self.task_names)

    @torch.no_grad()
    def subbatch_losses(self, count: int, fresh: bool = False) -> tuple[Tensor, Tensor]:
        count = min(count, self.x.shape[0])
        part = self.x[:count]
        tasks = self.criterion.per_image_task_losses
        before = tasks(head(self.output, count), part, self.task_names).mean(0)
        with self._noise(fresh), self.model.noise.of_batch(self.x.shape[0]):
            out = self.forward(part)
        return before, tasks(out, part, self.task_names).mean(0)
