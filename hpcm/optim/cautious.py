"""Cautious Adam: Adam whose update is masked where it disagrees in sign with the gradient.

Liang et al., "Cautious Optimizers: Improving Training with One Line of Code" (arXiv 2411.16085),
cautious Adam: with Adam's update ``u_t = m_hat_t / (sqrt(v_hat_t) + eps)`` and gradient ``g_t``,

    phi_t = 1[u_t * g_t > 0]                     (element-wise, per tensor)
    theta_{t+1} = theta_t - lr * u_t * phi_t / max(mean(phi_t), 1e-3)

The rescale keeps the average step size of the surviving elements. The Balanced R-D reference
code (Zhang et al., arXiv 2502.20161) additionally caps the rescale factor at 10, which is
available here as ``max_scale`` (off by default).

Adam itself follows ``torch.optim.Adam``: bias-corrected moments and eps added to
``sqrt(v_t) / sqrt(1 - beta2^t)``, so with a mask of all ones the two produce the same update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# Floor of the kept fraction in the rescale 1 / max(mean(mask), floor) (Liang et al. 2024).
MIN_MASK_FRACTION = 1e-3


@dataclass
class _GroupTensors:
    """The tensors of one parameter group that a step updates, in matching order."""

    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    exp_avgs: list[Tensor] = field(default_factory=list)
    exp_avg_sqs: list[Tensor] = field(default_factory=list)
    steps: list[Tensor] = field(default_factory=list)


class CautiousAdam(torch.optim.Optimizer):
    """Adam with the cautious mask of Liang et al. 2024 (arXiv 2411.16085).

    Args:
        params: parameters or parameter groups, as for any ``torch.optim.Optimizer``.
        lr: learning rate.
        betas: decay rates of the first and second moment estimates.
        eps: added to the bias-corrected ``sqrt(v)`` (PyTorch placement).
        weight_decay: L2 coefficient; coupled (added to the gradient, as in ``torch.optim.Adam``)
            unless ``decoupled_weight_decay`` is set.
        max_scale: optional cap on the per-tensor rescale factor ``1 / max(mean(mask), 1e-3)``;
            ``10.0`` reproduces the Balanced R-D reference code, ``None`` (default) is the
            original method.
        decoupled_weight_decay: apply weight decay as ``p *= 1 - lr * weight_decay`` (AdamW).

    Parameters whose ``.grad`` is ``None`` are skipped and keep their state untouched. Each
    parameter counts its own steps, so bias correction stays exact for parameters that do not
    receive a gradient every step.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_scale: float | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if eps < 0.0 or weight_decay < 0.0:
            raise ValueError("eps and weight_decay must be non-negative")
        if max_scale is not None and max_scale < 1.0:
            raise ValueError(f"max_scale must be >= 1 (it caps an up-scaling), got {max_scale}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "max_scale": max_scale,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def _init_group(self, group: dict[str, Any]) -> _GroupTensors:
        """The parameters of ``group`` that have gradients, with their state (created lazily)."""
        t = _GroupTensors()
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("CautiousAdam does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError("CautiousAdam does not support complex parameters")
            state = self.state[p]
            if len(state) == 0:
                # Step counter on the CPU (as torch.optim.Adam) so bias corrections need no sync.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            t.params.append(p)
            t.grads.append(p.grad)
            t.exp_avgs.append(state["exp_avg"])
            t.exp_avg_sqs.append(state["exp_avg_sq"])
            t.steps.append(state["step"])
        return t

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Performs one optimisation step over all groups (foreach kernels, no host syncs)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            tensors = self._init_group(group)
            if tensors.params:
                self._update(group, tensors)
        return loss

    @staticmethod
    def _update(group: dict[str, Any], t: _GroupTensors) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = (
            t.params,
            t.grads,
            t.exp_avgs,
            t.exp_avg_sqs,
            t.steps,
        )
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        max_scale = group["max_scale"]

        torch._foreach_add_(steps, 1.0)
        if wd != 0.0:
            if group["decoupled_weight_decay"]:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            else:
                grads = torch._foreach_add(grads, params, alpha=wd)

        # Adam moments: m <- b1 m + (1 - b1) g ; v <- b2 v + (1 - b2) g^2.
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)

        # Steps live on the CPU: reading them is free of device syncs.
        step_values = [float(s) for s in steps]
        neg_step_sizes = [-lr / (1.0 - beta1**t) for t in step_values]
        bc2_sqrt = [math.sqrt(1.0 - beta2**t) for t in step_values]

        # Cautious mask: the update has the sign of m (denominator > 0), so u * g > 0 <=> m * g > 0.
        masks = torch._foreach_mul(exp_avgs, grads)
        torch._foreach_sign_(masks)
        torch._foreach_clamp_min_(masks, 0.0)
        # Kept count = L1 norm of the 0/1 mask; accumulate in fp32 whatever the parameter dtype
        # (cast first: DTensor's foreach_norm, under FSDP, does not take a dtype argument).
        kept = torch._foreach_norm([m.float() for m in masks], 1)
        scales = torch._foreach_div(kept, [float(p.numel()) for p in params])
        torch._foreach_clamp_min_(scales, MIN_MASK_FRACTION)
        torch._foreach_reciprocal_(scales)
        if max_scale is not None:
            torch._foreach_clamp_max_(scales, float(max_scale))
        scales = [s.to(m.dtype) for s, m in zip(scales, masks, strict=True)]
        torch._foreach_mul_(masks, scales)
        torch._foreach_mul_(masks, exp_avgs)  # masks now hold the scaled, masked first moment

        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, masks, denom, neg_step_sizes)
