"""Rate-distortion training loss and the task losses the balancers weigh.

``L = D + R`` with ``D = lambda * 255^2 * MSE`` (or ``lambda * (1 - MS-SSIM)``) and ``R`` the
estimated rate in bits per pixel, ``sum(-log2 p) / (B*H*W)`` over all latent likelihoods.
This is the loss of Ballé et al., "End-to-end Optimized Image Compression" (ICLR 2017) in the form
used by the HPCM training script (Li et al., "Learned Image Compression with Hierarchical
Progressive Context Modeling", arXiv 2507.19125; spec section 6). The MS-SSIM variant follows the
HPCM authors' recipe (LIC-HPCM issue #9).

Task sets (``optimizer.tasks``), the loss vectors a :mod:`hpcm.optim.balancer` weighs:

- ``rd``: ``[distortion, bpp_loss]``, the two objectives of Balanced R-D (Zhang et al., CVPR
  2025, arXiv 2502.20161); their sum is the loss above;
- ``scales``: ``[distortion, bpp_s1, bpp_s2, bpp_s3, bpp_z]``, the hierarchical variant over
  HPCM's coding scales. The per-scale rates are separate objectives (each is the rate of its
  own latent elements, :func:`scale_rates`), unlike fixed fractions of one loss, whose logarithms
  all have the same gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hpcm.metrics import (
    MAX_8BIT,
    bits_from_likelihoods,
    iter_likelihoods,
    ms_ssim,
    mse_to_psnr,
)

METRICS = ("mse", "ms-ssim")
TASK_SETS: dict[str, tuple[str, ...]] = {
    "rd": ("distortion", "bpp_loss"),
    "scales": ("distortion", "bpp_s1", "bpp_s2", "bpp_s3", "bpp_z"),
}
SCALE_NAMES = ("s1", "s2", "s3")


def task_names(task_set: str) -> tuple[str, ...]:
    """The task losses of a task set (``rd`` or ``scales``), in balancer order."""
    if task_set not in TASK_SETS:
        raise ValueError(f"unknown task set {task_set!r}; choose from {', '.join(TASK_SETS)}")
    return TASK_SETS[task_set]


class RateDistortionLoss(nn.Module):
    """``loss = distortion + bpp_loss`` for a model returning ``x_hat`` and ``likelihoods``.

    Args:
        lmbda: rate-distortion trade-off (e.g. 0.0018 ... 0.0483 for MSE, 2.4 ... 60.5 for MS-SSIM).
        metric: ``"mse"`` or ``"ms-ssim"``.

    ``forward(output, target)`` returns a dict of 0-dim tensors: ``loss``, ``distortion``,
    ``bpp_loss``, ``mse``, ``psnr`` (per batch, from the MSE, detached), ``ms_ssim`` (MS-SSIM
    metric only) and, when there are several likelihood tensors, ``bpp_<name>`` for each
    (``bpp_y``, ``bpp_z``, ...; nested dicts give ``bpp_y_s1`` and so on). The per-name rates keep
    their gradients so that per-scale task losses can be built from them.
    """

    def __init__(self, lmbda: float, metric: str = "mse") -> None:
        super().__init__()
        if not lmbda > 0:
            raise ValueError(f"lmbda must be positive, got {lmbda}")
        metric_name = metric.lower().replace("_", "-")
        if metric_name not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
        self.lmbda = float(lmbda)
        self.metric = metric_name

    def distortion(self, mse: Tensor, similarity: Tensor | None) -> Tensor:
        """The distortion term from the MSE (or the MS-SSIM), batch-wise or per image."""
        if self.metric == "mse":
            return self.lmbda * MAX_8BIT**2 * mse
        return self.lmbda * (1.0 - similarity)

    def forward(self, output: Mapping[str, Any], target: Tensor) -> dict[str, Tensor]:
        x_hat = output["x_hat"]
        if x_hat.shape != target.shape:
            raise ValueError(f"x_hat {tuple(x_hat.shape)} != target {tuple(target.shape)}")
        batch, _, height, width = target.shape
        num_pixels = batch * height * width

        rates = {
            name: bits_from_likelihoods(tensor) / num_pixels
            for name, tensor in iter_likelihoods(output["likelihoods"])
        }
        if not rates:
            raise ValueError("model output holds no likelihood tensors")
        bpp_loss = torch.stack(list(rates.values())).sum()

        mse = torch.mean((x_hat - target) ** 2)
        result: dict[str, Tensor] = {"mse": mse, "psnr": mse_to_psnr(mse.detach())}
        similarity = None if self.metric == "mse" else ms_ssim(x_hat, target)
        if similarity is not None:
            result["ms_ssim"] = similarity
        distortion = self.distortion(mse, similarity)

        result.update(loss=distortion + bpp_loss, distortion=distortion, bpp_loss=bpp_loss)
        if len(rates) > 1:
            result.update({f"bpp_{name}": rate for name, rate in rates.items()})
        return result

    def task_losses(
        self, losses: Mapping[str, Tensor], output: Mapping[str, Any], names: tuple[str, ...]
    ) -> Tensor:
        """The task-loss vector ``names`` of a batch (``forward``'s ``losses``); per-scale
        rates are computed from the model output."""
        if any(n not in losses for n in names):
            batch, _, height, width = output["x_hat"].shape
            losses = {**losses, **scale_rates(output, batch * height * width)}
        return torch.stack([losses[n] for n in names])

    def per_image_task_losses(
        self, output: Mapping[str, Any], target: Tensor, names: tuple[str, ...]
    ) -> Tensor:
        """Task losses ``names`` of every image, shape ``(B, len(names))``; their mean over the
        batch is :meth:`task_losses` of the batch (images of one size)."""
        x_hat = output["x_hat"]
        height, width = target.shape[-2:]
        per_image: dict[str, Tensor] = {}
        if "distortion" in names:
            mse = (x_hat - target).pow(2).flatten(1).mean(1)
            similarity = None if self.metric == "mse" else ms_ssim(x_hat, target, per_image=True)
            per_image["distortion"] = self.distortion(mse, similarity).float()
        if "bpp_loss" in names:
            bits = sum(
                torch.log(t).flatten(1).sum(1) / -math.log(2.0)
                for _, t in iter_likelihoods(output["likelihoods"])
            )
            per_image["bpp_loss"] = bits / (height * width)
        if any(n not in per_image for n in names):
            per_image.update(scale_rates(output, height * width, per_image=True))
        return torch.stack([per_image[n] for n in names], dim=1)

    def extra_repr(self) -> str:
        return f"lmbda={self.lmbda}, metric={self.metric!r}"


def effective_lambda(lmbda: float, applied: Tensor, task_losses: Tensor) -> Tensor:
    """The trade-off a balanced model step actually trains at (a 0-dim tensor, no host sync).

    The step follows ``a_D grad D + sum_k a_k grad R_k`` (``applied`` = the balancer's
    ``applied_weights``, distortion first; ``D = lambda * 255^2 * MSE``). Up to a positive factor
    that is the plain step of ``R + lambda_eff * 255^2 * MSE`` with ``lambda_eff = lambda * a_D /
    a_R``; with several rate tasks, ``a_R`` is their rate-weighted mean ``sum_k a_k R_k / sum_k
    R_k``. The plain sum gives ``lambda`` itself.
    """
    weights = applied[1:].float()
    if len(weights) == 1:
        return lmbda * applied[0].float() / weights[0]
    rates = task_losses[1:].detach().float()
    mean_rate_weight = (weights * rates).sum() / rates.sum().clamp_min(1e-12)
    return lmbda * applied[0].float() / mean_rate_weight


def scale_rates(
    output: Mapping[str, Any], num_pixels: int, per_image: bool = False
) -> dict[str, Tensor]:
    """Rate of each HPCM coding scale and of z, in bits per pixel, with gradients (``per_image``:
    one value per image, ``num_pixels`` then counts one image's pixels).

    The rate of y separates exactly into the elements coded at s1, s2 and s3 (the model's
    ``y_scale_map``), so ``bpp_s1 + bpp_s2 + bpp_s3 + bpp_z`` is the total rate.
    """

    def total(t: Tensor) -> Tensor:
        return t.flatten(1).sum(1) if per_image else t.sum()

    bits = -torch.log2(output["likelihoods"]["y"])
    scale_map = output["y_scale_map"].expand_as(bits)
    rates = {
        f"bpp_{name}": total(bits.masked_fill(scale_map != k, 0.0)) / num_pixels
        for k, name in enumerate(SCALE_NAMES)
    }
    rates["bpp_z"] = total(torch.log(output["likelihoods"]["z"])) / -math.log(2.0) / num_pixels
    return rates
