"""FAMO task weighting, the trajectory solution of Balanced rate-distortion optimisation.

FAMO (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", arXiv 2306.03072) keeps
task logits ``xi`` with weights ``z = softmax(xi)`` and, for task losses ``L_i`` with lower
bounds ``b_i``, steps the model along

    d = sum_i alpha_i grad L_i,   alpha_i = (z_i / D_i) / sum_j (z_j / D_j),   D_i = L_i - b_i + eps

which is the gradient of ``sum_i z_i log D_i / c`` with ``c = stopgrad(sum_j z_j / D_j)``
(FAMO's model update with its renormalisation ``c``). After the model step, the loss decrease
in log space ``delta_i = log D_i(theta_t) - log D_i(theta_{t+1})`` drives the logits (FAMO's
weight update):

    g = J^T delta + gamma * xi,   J = d softmax / d xi = diag(z) - z z^T,
    xi <- AdamStep(xi, g, lr=w_lr)

so the task whose log-loss falls more slowly gains weight and ``gamma`` pulls the logits back to
0. Zhang et al. (Balanced R-D, arXiv 2502.20161, the trajectory solution) apply exactly this to
the two tasks ``{distortion, rate}`` with ``b = -1`` (i.e. ``log(L + 1)``). This module balances
any list of losses and knows nothing about the model that produced them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

ReduceFn = Callable[[Tensor], Tensor]

_STATE_KEYS = (
    "logits",
    "exp_avg",
    "exp_avg_sq",
    "step",
    "min_losses",
    "prev_losses",
    "skipped_updates",
)


class FAMOWeighting:
    """Adaptive weights over ``n_tasks`` losses (FAMO, arXiv 2306.03072; arXiv 2502.20161 S1).

    Usage per training step::

        loss = famo.combine(losses)          # losses: Tensor[n] with autograd history
        loss.backward(); optimizer.step()
        with torch.no_grad():
            losses_after = ...               # same batch, updated parameters
        famo.update(losses_after)

    Args:
        n_tasks: number of losses.
        gamma: L2 pull of the logits toward 0 (FAMO's decay; the Balanced R-D code uses 0.003
            for ELIC and advises tuning it per model).
        w_lr: Adam learning rate of the logits.
        min_losses: lower bounds ``b_i`` (scalar or one per task). The default ``-1`` gives
            ``log(L + 1)`` as in the Balanced R-D code, which keeps every log argument >= 1 for
            non-negative losses.
        eps: added to ``L - b`` before division and log.
        device: where the state starts; it follows the device of the losses it is given.
        betas: Adam decay rates for the logits.
        adam_eps: Adam epsilon for the logits.
        reduce_fn: applied to (a detached copy of) every loss vector before use, e.g. an
            all-reduce mean under DDP so that all ranks hold the same weights. It may work in
            place on its argument and must return the reduced vector.

    All state lives in tensors (see :meth:`state_dict`); no method reads values back to the
    host except :attr:`skipped_updates`.
    """

    def __init__(
        self,
        n_tasks: int,
        gamma: float,
        w_lr: float,
        min_losses: float | Sequence[float] | Tensor,
        eps: float = 1e-8,
        device: torch.device | str | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        reduce_fn: ReduceFn | None = None,
    ) -> None:
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        if gamma < 0.0 or w_lr <= 0.0 or eps < 0.0:
            raise ValueError("gamma and eps must be >= 0 and w_lr > 0")
        self.n_tasks = n_tasks
        self.gamma = gamma
        self.w_lr = w_lr
        self.eps = eps
        self.betas = (float(betas[0]), float(betas[1]))
        self.adam_eps = adam_eps
        self.reduce_fn = reduce_fn
        dev = torch.device(device) if device is not None else torch.device("cpu")
        b = torch.as_tensor(min_losses, dtype=torch.float32, device=dev).detach().clone()
        if b.ndim == 0:
            b = b.expand(n_tasks).clone()
        if b.shape != (n_tasks,):
            raise ValueError(f"min_losses must be a scalar or have {n_tasks} entries")
        zeros = torch.zeros(n_tasks, dtype=torch.float32, device=dev)
        # alpha of the last combine(): the weights the model step applied to the losses
        self.last_alpha = torch.full((n_tasks,), 1.0 / n_tasks, device=dev)
        self._state: dict[str, Tensor | None] = {
            "logits": zeros.clone(),
            "exp_avg": zeros.clone(),
            "exp_avg_sq": zeros.clone(),
            "step": torch.zeros((), dtype=torch.float32, device=dev),
            "min_losses": b,
            "prev_losses": None,
            "skipped_updates": torch.zeros((), dtype=torch.int64, device=dev),
        }

    # ----------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        """Device holding the state."""
        return self._state["logits"].device

    @property
    def logits(self) -> Tensor:
        """The task logits ``xi`` (a copy)."""
        return self._state["logits"].clone()

    @property
    def weights(self) -> Tensor:
        """Task weights ``z = softmax(xi)``, a detached tensor of shape ``(n_tasks,)``."""
        return torch.softmax(self._state["logits"], dim=0).detach()

    @property
    def min_losses(self) -> Tensor:
        """Lower bounds ``b_i`` (a copy)."""
        return self._state["min_losses"].clone()

    @property
    def last_losses(self) -> Tensor | None:
        """The pre-step losses of the last :meth:`combine` call, after ``reduce_fn`` (the
        tensor itself, not a copy: read only); None before the first call."""
        return self._state["prev_losses"]

    @property
    def skipped_updates(self) -> int:
        """Logit updates skipped for non-finite deltas (reads the device back: logging only)."""
        return int(self._state["skipped_updates"].item())

    # ----------------------------------------------------------------------------- helpers
    def _follow(self, device: torch.device) -> None:
        if device != self.device:
            self._state = {k: (None if v is None else v.to(device)) for k, v in self._state.items()}

    def _prepare(self, losses: Tensor) -> Tensor:
        """Detached fp32 copy of a loss vector on the state's device, reduced by ``reduce_fn``."""
        if losses.shape != (self.n_tasks,):
            raise ValueError(
                f"expected a loss vector of shape ({self.n_tasks},), got {losses.shape}"
            )
        self._follow(losses.device)
        out = losses.detach().to(torch.float32, copy=True)
        if self.reduce_fn is not None:
            out = self.reduce_fn(out)
        return out

    def _shifted(self, losses: Tensor) -> Tensor:
        """``D_i = L_i - b_i + eps``."""
        return losses - self._state["min_losses"] + self.eps

    # ----------------------------------------------------------------------------- API
    def combine(self, losses: Tensor) -> Tensor:
        """Scalar to backpropagate: ``sum_i alpha_i L_i`` with detached FAMO weights ``alpha``.

        ``alpha_i = (z_i / D_i) / sum_j (z_j / D_j)`` (convex weights), so the gradient equals
        that of FAMO's ``sum_i z_i log D_i / c`` with ``c = stopgrad(sum_j z_j / D_j)``
        (arXiv 2306.03072) without building a graph through the logs. The
        pre-step losses are remembered for :meth:`update`. Requires ``L_i > b_i``.
        """
        reduced = self._prepare(losses)
        self._state["prev_losses"] = reduced.clone()
        ratio = self.weights / self._shifted(reduced)
        alpha = ratio / ratio.sum()
        self.last_alpha = alpha.detach()
        return (alpha.to(losses.dtype) * losses).sum()

    def update(self, losses_after: Tensor, losses_before: Tensor | None = None) -> None:
        """One Adam step on the logits from the log-loss decrease (arXiv 2306.03072).

        ``delta_i = log D_i(before) - log D_i(after)`` and ``g = J^T delta + gamma * xi`` with
        ``J^T delta = z * (delta - z . delta)``. ``losses_before`` defaults to the losses last
        given to :meth:`combine`. A step whose gradient is not finite (e.g. ``L <= b``) leaves
        every state tensor unchanged and increments :attr:`skipped_updates`; the check runs on
        the device without a host sync.
        """
        after = self._prepare(losses_after)
        if losses_before is not None:
            before = self._prepare(losses_before)
        elif self._state["prev_losses"] is not None:
            before = self._state["prev_losses"]
        else:
            raise RuntimeError("update() needs losses_before or a previous combine() call")
        self.update_delta(torch.log(self._shifted(before)) - torch.log(self._shifted(after)))

    def update_delta(self, delta: Tensor) -> None:
        """The logit step of :meth:`update` for a given log-loss decrease ``delta`` (shape
        ``(n_tasks,)``, already reduced over ranks), e.g. one estimated without a post-step
        forward. A non-finite ``delta`` is skipped and counted as :meth:`update` does."""
        if delta.shape != (self.n_tasks,):
            raise ValueError(f"expected a delta of shape ({self.n_tasks},), got {delta.shape}")
        self._follow(delta.device)
        delta = delta.detach().to(torch.float32)
        st = self._state
        xi = st["logits"]
        z = torch.softmax(xi, dim=0)
        grad = z * (delta - (z * delta).sum()) + self.gamma * xi
        ok = torch.isfinite(grad).all()
        grad = torch.where(ok, grad, torch.zeros_like(grad))

        # Adam (as torch.optim.Adam; PyTorch eps placement), applied only where ok.
        beta1, beta2 = self.betas
        step = st["step"] + ok.to(st["step"].dtype)
        exp_avg = torch.lerp(st["exp_avg"], grad, 1.0 - beta1)
        exp_avg_sq = st["exp_avg_sq"] * beta2 + (1.0 - beta2) * grad * grad
        t = torch.clamp_min(step, 1.0)
        bc1 = 1.0 - torch.pow(beta1, t)
        bc2 = 1.0 - torch.pow(beta2, t)
        denom = exp_avg_sq.sqrt() / bc2.sqrt() + self.adam_eps
        new_xi = xi - (self.w_lr / bc1) * exp_avg / denom

        st["logits"] = torch.where(ok, new_xi, xi)
        st["exp_avg"] = torch.where(ok, exp_avg, st["exp_avg"])
        st["exp_avg_sq"] = torch.where(ok, exp_avg_sq, st["exp_avg_sq"])
        st["step"] = step
        st["skipped_updates"] = st["skipped_updates"] + (~ok).to(torch.int64)

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Copies of all state tensors (``prev_losses`` is ``None`` before the first combine).

        Loadable with ``torch.load(..., weights_only=True)``. Hyper-parameters (gamma, w_lr, ...)
        are not included: they come from the configuration, as for the model.
        """
        return {k: (None if v is None else v.detach().clone()) for k, v in self._state.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` output onto this object's current device."""
        missing = [k for k in _STATE_KEYS if k not in state_dict]
        if missing:
            raise KeyError(f"FAMO state is missing {missing}")
        dev = self.device
        new: dict[str, Tensor | None] = {}
        for k in _STATE_KEYS:
            v = state_dict[k]
            if v is None:
                if k != "prev_losses":
                    raise ValueError(f"FAMO state entry {k!r} is None")
                new[k] = None
                continue
            ref = self._state[k] if self._state[k] is not None else self._state["logits"]
            v = torch.as_tensor(v).detach().to(device=dev, dtype=ref.dtype, copy=True)
            if v.shape != ref.shape:
                raise ValueError(
                    f"FAMO state {k!r} has shape {tuple(v.shape)}, expected {ref.shape}"
                )
            new[k] = v
        self._state = new

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_tasks={self.n_tasks}, gamma={self.gamma}, w_lr={self.w_lr}, "
            f"eps={self.eps}, betas={self.betas}, device={self.device})"
        )
