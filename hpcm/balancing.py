"""Which task losses the Balanced optimizers balance, and the QP balance step.

Two task sets:

- ``rd``: ``[distortion, bpp_loss]``, the two objectives of Balanced R-D (Zhang et al., CVPR
  2025, arXiv 2502.20161);
- ``scales``: ``[distortion, bpp_s1, bpp_s2, bpp_s3, bpp_z]``, the hierarchical variant over
  HPCM's coding scales. The per-scale rates are genuinely separate objectives (each is the
  rate of its own latent elements, :func:`hpcm.losses.scale_rates`), unlike fixed fractions of
  one loss, whose logarithms all have the same gradient.

:class:`QPWeighting` is the paper's second solution (a QP with an equality constraint, meant for
fine-tuning): per step, the gradients of ``log(L_R - b_R)`` and ``log(L_D - b_D)`` are combined
with the closed-form weights of :func:`hpcm.optim.qp.qp_weights`, which give both log-losses
the same first-order decrease.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from hpcm.losses import scale_rates
from hpcm.optim.qp import combine_gradients_qp, snapshot_grads

TASK_SETS: dict[str, tuple[str, ...]] = {
    "rd": ("distortion", "bpp_loss"),
    "scales": ("distortion", "bpp_s1", "bpp_s2", "bpp_s3", "bpp_z"),
}


def task_names(task_set: str) -> tuple[str, ...]:
    if task_set not in TASK_SETS:
        raise ValueError(f"unknown task set {task_set!r}; choose from {', '.join(TASK_SETS)}")
    return TASK_SETS[task_set]


def weight_metric_name(task: str) -> str:
    """Logged name of a task weight: ``task_weight_distortion``, ``task_weight_bpp``,
    ``task_weight_bpp_s1`` ..."""
    return "task_weight_" + ("bpp" if task == "bpp_loss" else task)


def task_vector(
    losses: Mapping[str, Tensor], output: Mapping[str, Any], names: Sequence[str], num_pixels: int
) -> Tensor:
    """Stack the named task losses; per-scale rates are computed from the model output."""
    if any(n not in losses for n in names):
        losses = {**losses, **scale_rates(output, num_pixels)}
    return torch.stack([losses[n] for n in names])


def check_lower_bounds(min_losses: Sequence[float], names: Sequence[str]) -> None:
    """Lower bounds must lie below every value a loss can take: all our losses can approach 0
    (a scale's rate does for flat images), so a bound at or above 0 would put log(L - b) at or
    below log(0) as training proceeds."""
    if len(min_losses) != len(names):
        raise ValueError(f"min_losses needs {len(names)} values ({', '.join(names)})")
    bad = [f"{n}={b}" for n, b in zip(names, min_losses) if b >= 0]
    if bad:
        raise ValueError(f"min_losses must be negative (losses reach 0): {', '.join(bad)}")


class QPWeighting:
    """Balanced R-D solution 2 for two tasks (``[distortion, rate]`` order).

    :meth:`backward` replaces the usual ``loss.backward()``: it back-propagates the two
    log-losses separately (one extra backward pass and one gradient snapshot), combines them
    in place with the QP weights and divides by ``c = sum_i w_i / D_i`` (``D_i = L_i - b_i``),
    the renormalisation that turns log-gradients back into loss-gradient units as FAMO does;
    ``c`` is skipped when it is not positive (weights of opposite sign).
    """

    def __init__(self, min_losses: Sequence[float] = (-1.0, -1.0), eps: float = 1e-8):
        self._min = torch.tensor([float(b) for b in min_losses])
        self.eps = float(eps)
        self._weights = torch.full((2,), 0.5)

    @property
    def weights(self) -> Tensor:
        return self._weights

    def backward(self, losses: Tensor, params: Sequence[Tensor]) -> Tensor:
        """Gradients of the balanced objective into ``.grad`` of ``params`` (zeroed first).
        Returns the shifted losses ``D``."""
        shifted = losses - self._min.to(losses.device) + self.eps
        logs = torch.log(shifted)
        for p in params:
            p.grad = None
        logs[1].backward(retain_graph=True)  # rate first: its snapshot is the extra buffer
        rate_grads = snapshot_grads(params)
        logs[0].backward()
        w_rate, w_dist = combine_gradients_qp(params, rate_grads)
        d = shifted.detach()
        c = w_dist / d[0] + w_rate / d[1]
        scale = torch.where(torch.isfinite(c) & (c > 0), 1.0 / c, torch.ones_like(c))
        grads = [p.grad for p in params if p.grad is not None]
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        self._weights = torch.stack([w_dist, w_rate]).detach().float()
        return d

    def state_dict(self) -> dict[str, Tensor]:
        return {"min_losses": self._min.clone(), "weights": self._weights.clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self._min = state["min_losses"].clone().cpu()
        self._weights = state["weights"].clone()
