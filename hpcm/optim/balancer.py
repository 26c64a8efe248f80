"""Task balancers: how one training step turns a vector of task losses into gradients.

Every balancer has the same parts, and the training loop uses nothing else::

    objective = balancer.backward(task_losses, params)   # gradients into .grad
    balancer.applied_weights                             # what that step applied to each loss
    ... one clip, the finiteness check, optimizer.step() ...
    balancer.after_step(probe)                           # e.g. FAMO's weight update
    balancer.report()                                    # what to log, once per logging window
    balancer.state_dict() / load_state_dict(state)       # saved with every checkpoint

``applied_weights`` are the factors ``a_i`` of the model step's gradient ``sum_i a_i grad L_i``
(a tensor on the losses' device, no host sync): ones for the plain sum, FAMO's ``alpha``, the QP
weights divided by their renormalisation. The trade-off the model actually trains at follows from
them (``hpcm.train.losses.effective_lambda``), and they are what ``report`` logs as
``task_weight_*``: FAMO's softmax ``z`` is logged as ``famo_softmax_*``, the QP solution before its
renormalisation as ``qp_weight_*``.

A balancer knows nothing of HPCM or of how the losses were computed: the task losses are a
vector (``task_names`` says which), and after the optimizer step it may ask the loop's
:class:`StepProbe` for post-step losses. Three implementations:

- :class:`PlainBalancer`: the sum of the task losses (``R + lambda D`` for ``[distortion,
  bpp_loss]``), the Adam baseline;
- :class:`FAMOBalancer`: FAMO weights (arXiv 2306.03072), Balanced R-D solution 1 (arXiv
  2502.20161), with its post-step update from :mod:`hpcm.optim.famo_updates`;
- :class:`QPBalancer`: the closed-form two-task QP, Balanced R-D solution 2.

:class:`hpcm.optim.lambda_replay.LambdaReplayBalancer` (the plain step on another run's logged
effective-lambda trajectory, the control twin of an adaptive run) lives in its own module.

A new method is one new class with these methods plus one config file naming it with
``_target_`` (``conf/optimizer/``); its constructor receives ``task_names`` and ``reduce_fn``
(a mean over data-parallel ranks, or None) besides its own keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from hpcm.optim.famo import FAMOWeighting
from hpcm.optim.famo_updates import build_famo_update
from hpcm.optim.qp import combine_gradients_qp, snapshot_grads

log = logging.getLogger(__name__)

ReduceFn = Callable[[Tensor], Tensor]


class StepProbe(Protocol):
    """Post-step re-evaluations of the batch just trained on (``hpcm.train.post_step``)."""

    def losses_after(self, fresh: bool = False) -> Tensor:
        """Task losses of the batch with the updated parameters and the step's own quantization
        noise (``fresh``: new noise)."""
        ...

    def subbatch_losses(self, count: int, fresh: bool = False) -> tuple[Tensor, Tensor]:
        """``(before, after)``: mean task losses of the first ``count`` images with the
        parameters before and after the step, each image with its noise of the step (after the
        step, ``fresh``: new noise)."""
        ...


class Balancer(Protocol):
    task_names: tuple[str, ...]
    applied_weights: Tensor

    def backward(self, task_losses: Tensor, params: Sequence[Tensor]) -> Tensor:
        """Gradients of the balanced objective into ``.grad``; returns the (detached) objective."""
        ...

    def after_step(self, probe: StepProbe) -> None: ...

    def report(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def weight_metric_name(task: str, prefix: str = "task_weight_") -> str:
    """Logged name of a per-task value: ``task_weight_distortion``, ``task_weight_bpp``,
    ``task_weight_bpp_s1``, ``famo_softmax_bpp`` ..."""
    return prefix + ("bpp" if task == "bpp_loss" else task)


def _named(prefix: str, task_names: Sequence[str], values: Tensor) -> dict[str, float]:
    """``{prefix + task: value}`` for one value per task."""
    names = [weight_metric_name(t, prefix) for t in task_names]
    return dict(zip(names, values.tolist(), strict=True))


def check_lower_bounds(min_losses: Sequence[float], names: Sequence[str]) -> None:
    """Lower bounds must lie below every value a loss can take: all our losses can approach 0
    (a scale's rate does for flat images), so a bound at or above 0 would put log(L - b) at or
    below log(0) as training proceeds."""
    if len(min_losses) != len(names):
        raise ValueError(f"min_losses needs {len(names)} values ({', '.join(names)})")
    bad = [f"{n}={b}" for n, b in zip(names, min_losses, strict=True) if b >= 0]
    if bad:
        raise ValueError(f"min_losses must be negative (losses reach 0): {', '.join(bad)}")


class PlainBalancer:
    """The plain sum of the task losses: the usual ``R + lambda D`` step (the Adam baseline)."""

    def __init__(self, task_names: Sequence[str], reduce_fn: ReduceFn | None = None) -> None:
        del reduce_fn  # DDP averages the gradients; nothing else to agree on
        self.task_names = tuple(task_names)
        self.applied_weights = torch.ones(len(self.task_names))

    def backward(self, task_losses: Tensor, params: Sequence[Tensor]) -> Tensor:
        if self.applied_weights.device != task_losses.device:  # once
            self.applied_weights = self.applied_weights.to(task_losses.device)
        objective = task_losses.sum()
        objective.backward()
        return objective.detach()

    def after_step(self, probe: StepProbe) -> None:
        del probe

    def report(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state


class _WeightReport:
    """The applied task weights to log, and a warning when one of them dominates."""

    def __init__(
        self, task_names: tuple[str, ...], warn_weight_above: float | None, remedy: str
    ) -> None:
        self.names = [weight_metric_name(t) for t in task_names]
        self.limit = warn_weight_above
        self.remedy = remedy  # what the user can do about it, for the warning
        self._warned = False

    def __call__(self, weights: Tensor) -> dict[str, float]:
        values = weights.tolist()
        top = max(range(len(values)), key=values.__getitem__)
        dominating = self.limit is not None and values[top] > float(self.limit)
        if dominating and not self._warned:
            log.warning(
                "task weight %s = %.3f dominates (> %s): %s",
                self.names[top],
                values[top],
                self.limit,
                self.remedy,
            )
        self._warned = dominating
        return dict(zip(self.names, values, strict=True))


class FAMOBalancer:
    """FAMO task weights (Balanced R-D solution 1) over ``task_names``.

    The model step follows ``sum_i z_i log(L_i - b_i) / c`` (:meth:`FAMOWeighting.combine`);
    after the optimizer step the logits move by the log-loss decrease of each task, measured as
    ``update_mode`` says (:mod:`hpcm.optim.famo_updates`: ``exact``, ``subbatch``,
    ``next_batch``) with the noise ``post_step_noise`` says (``fresh`` or ``replay``).
    ``reduce_fn`` averages the losses over data-parallel ranks, so that every
    rank holds the same weights.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        gamma: float,
        w_lr: float,
        min_losses: Sequence[float],
        warn_weight_above: float | None,
        update_mode: str,
        subbatch_size: int,
        ema_decay: float,
        exact_warmup_steps: int,
        post_step_noise: str = "fresh",
        reduce_fn: ReduceFn | None = None,
    ) -> None:
        self.task_names = tuple(task_names)
        check_lower_bounds(list(min_losses), self.task_names)
        self.famo = FAMOWeighting(
            n_tasks=len(self.task_names),
            gamma=float(gamma),
            w_lr=float(w_lr),
            min_losses=[float(b) for b in min_losses],
            reduce_fn=reduce_fn,
        )
        self.update = build_famo_update(
            update_mode, subbatch_size, ema_decay, exact_warmup_steps, post_step_noise
        )
        self._report = _WeightReport(
            self.task_names,
            warn_weight_above,
            "raise optimizer.balancer.gamma or lower optimizer.balancer.w_lr to keep FAMO's "
            "softmax nearer uniform",
        )

    @property
    def weights(self) -> Tensor:
        return self.famo.weights

    @property
    def applied_weights(self) -> Tensor:
        return self.famo.last_alpha

    def backward(self, task_losses: Tensor, params: Sequence[Tensor]) -> Tensor:
        objective = self.famo.combine(task_losses)
        objective.backward()
        return objective.detach()

    def after_step(self, probe: StepProbe) -> None:
        self.update(self.famo, probe)

    def report(self) -> dict[str, float]:
        """The weights the last step applied (``task_weight_*``) and FAMO's softmax
        (``famo_softmax_*``)."""
        applied = self._report(self.applied_weights)
        return {**applied, **_named("famo_softmax_", self.task_names, self.weights)}

    def state_dict(self) -> dict[str, Any]:
        """FAMO's tensors plus the update mode's state (``update_*`` keys)."""
        extra = {f"update_{k}": v for k, v in self.update.state_dict().items()}
        return {**self.famo.state_dict(), **extra}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.famo.load_state_dict({k: v for k, v in state.items() if not k.startswith("update_")})
        self.update.load_state_dict(
            {k[len("update_") :]: v for k, v in state.items() if k.startswith("update_")}
        )


class QPBalancer:
    """Balanced R-D solution 2 for two tasks (``[distortion, rate]`` order).

    :meth:`backward` back-propagates the two log-losses ``log(L_i - b_i)`` separately (one extra
    backward pass and one gradient snapshot), combines them in place with the closed-form QP
    weights (:func:`hpcm.optim.qp.combine_gradients_qp`: both log-losses get the same
    first-order decrease) and divides by ``c = sum_i w_i / D_i`` (``D_i = L_i - b_i``), the
    renormalisation that turns log-gradients back into loss-gradient units as FAMO does; ``c`` is
    skipped when it is not positive (``affine`` weights of opposite sign). Single-process only:
    under DDP the two backward passes would each all-reduce.

    ``constraint``: ``simplex`` (``w >= 0``, the min-norm point of the two gradients' convex
    hull: no parameter that one task alone touches is stepped up that task's loss) or
    ``affine`` (``w_D + w_R = 1`` alone, as the notes on the paper write it; a negative weight
    steps the parameters of that task alone up its loss). See :mod:`hpcm.optim.qp`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        min_losses: Sequence[float],
        warn_weight_above: float | None,
        constraint: str = "simplex",
        eps: float = 1e-8,
        reduce_fn: ReduceFn | None = None,
    ) -> None:
        self.task_names = tuple(task_names)
        if constraint not in ("simplex", "affine"):
            raise ValueError(
                f"unknown optimizer.balancer.constraint {constraint!r}; choose simplex or affine"
            )
        self.simplex = constraint == "simplex"
        if len(self.task_names) != 2:
            raise ValueError("the QP balancer balances two tasks: use optimizer.tasks=rd")
        if reduce_fn is not None:
            raise ValueError("the QP balancer runs in one process: use a FAMO optimizer with DDP")
        check_lower_bounds(list(min_losses), self.task_names)
        self._min = torch.tensor([float(b) for b in min_losses])
        self.eps = float(eps)
        self._weights = torch.full((2,), 0.5)
        self.applied_weights = torch.full((2,), 0.5)
        self._report = _WeightReport(
            self.task_names,
            warn_weight_above,
            "the QP weights follow the two log-loss gradients and have no setting; the other "
            "task is barely trained (watch train/psnr and train/bpp_loss; docs/results.md)",
        )

    @property
    def weights(self) -> Tensor:
        return self._weights

    def backward(self, task_losses: Tensor, params: Sequence[Tensor]) -> Tensor:
        if self._min.device != task_losses.device:  # once: the bounds live beside the losses
            self._min = self._min.to(task_losses.device)
        shifted = task_losses - self._min + self.eps
        logs = torch.log(shifted)
        logs[1].backward(retain_graph=True)  # rate first: its snapshot is the extra buffer
        rate_grads = snapshot_grads(params)
        logs[0].backward()
        w_rate, w_dist = combine_gradients_qp(params, rate_grads, simplex=self.simplex)
        self._weights = torch.stack([w_dist, w_rate]).detach().float()
        # d(log D_i) = grad L_i / D_i: the step applies (w_i / D_i) * scale to grad L_i.
        per_task = self._weights / shifted.detach().float()
        c = per_task.sum()
        scale = torch.where(torch.isfinite(c) & (c > 0), 1.0 / c, torch.ones_like(c))
        grads = [p.grad for p in params if p.grad is not None]
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        self.applied_weights = per_task * scale
        return task_losses.sum().detach()

    def after_step(self, probe: StepProbe) -> None:
        del probe

    def report(self) -> dict[str, float]:
        """The weights the last step applied (``task_weight_*``) and the QP solution before
        its renormalisation (``qp_weight_*``)."""
        applied = self._report(self.applied_weights)
        return {**applied, **_named("qp_weight_", self.task_names, self._weights)}

    def state_dict(self) -> dict[str, Tensor]:
        return {"min_losses": self._min.clone().cpu(), "weights": self._weights.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._min = state["min_losses"].clone().cpu()
        self._weights = state["weights"].clone()
