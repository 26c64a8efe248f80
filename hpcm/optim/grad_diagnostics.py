"""Per-task gradient diagnostics: how large the distortion and rate gradients are and whether they
agree, the quantities that decide what a balancer does.

A min-norm (QP) weighting goes as ``1 / |g_i|^2`` when the task gradients are nearly orthogonal,
and FAMO's weights follow the tasks' log-loss falls, which the gradient sizes drive: logging
``|g_D|``, ``|g_R|``, their ratio and cosine beside the effective lambda shows a collapse coming.
The gradients are of the task losses as trained (``distortion = lambda * 255^2 * MSE``, the rate
in bits per pixel; with per-scale rates, of their sum), over all trainable parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

NAMES = ("grad_norm_distortion", "grad_norm_rate", "grad_norm_ratio", "grad_cosine")


def _flat_dot(first: Sequence[Tensor | None], second: Sequence[Tensor | None]) -> Tensor:
    terms = [
        (a.double() * b.double()).sum()
        for a, b in zip(first, second, strict=True)
        if a is not None and b is not None
    ]
    return torch.stack(terms).sum() if terms else torch.zeros((), dtype=torch.float64)


def gradient_diagnostics(task_losses: Tensor, params: Sequence[Tensor]) -> Tensor:
    """``[|g_D|, |g_R|, |g_D| / |g_R|, cos(g_D, g_R)]`` (float32, on the losses' device, no host
    sync) for ``task_losses = [distortion, rate, ...]``: ``g_D`` the gradient of the first task,
    ``g_R`` that of the sum of the others. The graph is kept for the step's own backward; the
    parameters' ``.grad`` are not touched. Two backward passes: call it every N steps."""
    params = list(params)
    g_d = torch.autograd.grad(task_losses[0], params, retain_graph=True, allow_unused=True)
    g_r = torch.autograd.grad(task_losses[1:].sum(), params, retain_graph=True, allow_unused=True)
    dd, rr, dr = _flat_dot(g_d, g_d), _flat_dot(g_r, g_r), _flat_dot(g_d, g_r)
    norm_d, norm_r = dd.sqrt(), rr.sqrt()
    ratio = norm_d / norm_r.clamp_min(1e-30)
    cosine = dr / (norm_d * norm_r).clamp_min(1e-30)
    out = torch.stack([norm_d, norm_r, ratio, cosine]).float()
    return out.to(task_losses.device)
