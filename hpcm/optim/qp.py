"""Two-task quadratic-programming gradient balance (Balanced R-D, solution 2).

Zhang et al. (arXiv 2502.20161, the QP solution) combine the gradients ``g_0, g_1`` of two
normalised objectives (e.g. ``log D_R`` and ``log D_D``) as ``d = w_0 g_0 + w_1 g_1`` with

    w = argmin 1/2 w^T Q w   s.t.  w_0 + w_1 = 1,     Q = G^T G (2x2 Gram matrix),

whose closed form is ``w_0 = (|g_1|^2 - g_0.g_1) / |g_0 - g_1|^2``, ``w_1 = 1 - w_0`` (the
``affine`` solution). Then ``d . (g_0 - g_1) = 0``: both objectives get the same first-order
decrease ``d.g_0 = d.g_1 = |d|^2``. That decrease can be negative for one task's own
parameters: with ``g_0 = (1, 0)``, ``g_1 = (3, 1)``, ``w = (1.4, -0.4)`` and ``d = (0.2, -0.4)``
steps the second parameter, which only task 1 touches, up task 1's loss.

The ``simplex`` solution adds ``w >= 0``: the min-norm point of the convex hull of the two
gradients, the dual of ``max_d min_i g_i.d - |d|^2 / 2`` (MGDA; FAMO, arXiv 2306.03072, solves
the same max-min problem, its weights live on the simplex). For two tasks it is the affine
solution clipped to ``[0, 1]``; where the clip is active, ``d`` is one task's own gradient, which
decreases both losses at least as fast to first order as the affine point (``d.g_i >= |d|^2``).
The secondary notes on Balanced R-D that this code follows (the paper text was not verified)
write the equality constraint alone, without ``w >= 0``.

:func:`combine_gradients_qp` works in place on ``.grad`` with a single extra buffer, the snapshot
of the first task's gradient::

    (loss_0).backward(retain_graph=True)
    g0 = snapshot_grads(params)
    (loss_1).backward()                     # .grad now holds g0 + g1
    w0, w1 = combine_gradients_qp(params, g0)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

# Default relative threshold below which |g0 - g1|^2 / (|g0|^2 + |g1|^2) counts as degenerate:
# above the float32 rounding noise of the Gram entries (~1e-7), far below any real disagreement.
DEGENERATE_TOL = 1e-6


def qp_weights(
    g0_dot_g0: Tensor | float,
    g1_dot_g1: Tensor | float,
    g0_dot_g1: Tensor | float,
    tol: float = DEGENERATE_TOL,
    simplex: bool = False,
) -> tuple[Tensor, Tensor]:
    """Closed-form ``(w_0, w_1)`` of ``min 1/2 w^T Q w`` s.t. ``w_0 + w_1 = 1`` (arXiv 2502.20161),
    and ``w >= 0`` with ``simplex``.

    ``w_0 = (|g_1|^2 - g_0.g_1) / |g_0 - g_1|^2`` (clipped to ``[0, 1]`` with ``simplex``). When
    ``|g_0 - g_1|^2 <= tol * (|g_0|^2 + |g_1|^2)`` the two gradients coincide up to rounding and
    ``(0.5, 0.5)`` is returned. Works on tensors without host syncs; returns 0-dim tensors.
    """
    aa = torch.as_tensor(g0_dot_g0)
    bb = torch.as_tensor(g1_dot_g1, device=aa.device)
    ab = torch.as_tensor(g0_dot_g1, device=aa.device)
    diff_sq = aa + bb - 2.0 * ab
    degenerate = diff_sq <= tol * (aa + bb)
    safe = torch.where(degenerate, torch.ones_like(diff_sq), diff_sq)
    w0 = torch.where(degenerate, torch.full_like(diff_sq, 0.5), (bb - ab) / safe)
    if simplex:
        w0 = w0.clamp(0.0, 1.0)
    return w0, 1.0 - w0


def snapshot_grads(params: Iterable[Tensor]) -> list[Tensor]:
    """Copies of the parameters' ``.grad`` (zeros where ``.grad`` is ``None``), one per param."""
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]


def _sq_norm(tensors: list[Tensor], device: torch.device) -> Tensor:
    """Sum of squares over a tensor list, accumulated in float64 (foreach, no host sync)."""
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float64)
    return torch.stack([n.to(device) for n in norms]).square().sum()


def _dot(first: list[Tensor], second: list[Tensor], device: torch.device) -> Tensor:
    """Sum of per-tensor dot products, summed in float64 (one kernel per tensor, no copies)."""
    dots = [torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(first, second, strict=True)]
    return torch.stack([d.to(device=device, dtype=torch.float64) for d in dots]).sum()


@torch.no_grad()
def combine_gradients_qp(
    params: Iterable[Tensor],
    grads_first: list[Tensor],
    tol: float = DEGENERATE_TOL,
    simplex: bool = False,
) -> tuple[Tensor, Tensor]:
    """Replaces ``.grad = g_0 + g_1`` by the QP-balanced ``w_0 g_0 + w_1 g_1`` in place
    (:func:`qp_weights`, ``simplex``: ``w >= 0``).

    ``grads_first[i]`` is the snapshot of task 0's gradient for ``params[i]`` taken before task
    1's backward accumulated onto ``.grad`` (see :func:`snapshot_grads`). Parameters whose
    ``.grad`` is ``None`` are skipped. No buffer beyond the snapshot is allocated and nothing is
    read back to the host.

    The squared norms use foreach kernels; the cross term ``g_0 . g_1`` is a direct dot per
    tensor. (Deriving it from norms by polarisation, ``2 g_0.g_1 = |g_0+g_1|^2 - |g_0|^2 -
    |g_1|^2``, would avoid that loop but loses precision when one gradient is much larger than
    the other; the balance ``d.g_0 = d.g_1`` is then visibly off in float32.)
    Returns ``(w_0, w_1)`` as 0-dim float32 tensors on the gradients' device.
    """
    params = list(params)
    if len(params) != len(grads_first):
        raise ValueError(f"{len(params)} params but {len(grads_first)} first-task gradients")
    pairs = [(p.grad, g) for p, g in zip(params, grads_first, strict=True) if p.grad is not None]
    if not pairs:
        raise ValueError("no parameter has a gradient")
    grads = [gr for gr, _ in pairs]
    first = [g for _, g in pairs]
    device = grads[0].device

    torch._foreach_sub_(grads, first)  # .grad now holds g1
    w0, w1 = qp_weights(
        _sq_norm(first, device),
        _sq_norm(grads, device),
        _dot(first, grads, device),
        tol=tol,
        simplex=simplex,
    )

    # .grad <- w1 g1 + w0 g0. Not the lerp g1 + w0 (g0 - g1): when one gradient dominates, w0
    # or w1 is near 1 and the lerp cancels; scaling each part keeps the small weight's precision.
    w0_f, w1_f = w0.to(torch.float32), w1.to(torch.float32)
    torch._foreach_mul_(grads, [w1_f.to(device=g.device, dtype=g.dtype) for g in grads])
    torch._foreach_addcmul_(grads, first, [w0_f.to(device=g.device, dtype=g.dtype) for g in grads])
    return w0_f, w1_f
