"""Rate-distortion training loss.

``L = D + R`` with ``D = lambda * 255^2 * MSE`` (or ``lambda * (1 - MS-SSIM)``) and ``R`` the
estimated rate in bits per pixel, ``sum(-log2 p) / (B*H*W)`` over all latent likelihoods.
This is the loss of Ballé et al., "End-to-end Optimized Image Compression" (ICLR 2017) in the form
used by the HPCM training script (Li et al., "Learned Image Compression with Hierarchical
Progressive Context Modeling", arXiv 2507.19125; spec section 6). The MS-SSIM variant follows the
HPCM authors' recipe (LIC-HPCM issue #9).

The two terms are also exposed as a task-loss vector ``[D, R]`` for the Balanced R-D optimizer.
"""

from __future__ import annotations

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
# Order of the task-loss vector returned by ``RateDistortionLoss.task_losses``.
TASK_NAMES = ("distortion", "bpp_loss")


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
        if self.metric == "mse":
            distortion = self.lmbda * MAX_8BIT**2 * mse
        else:
            similarity = ms_ssim(x_hat, target)
            distortion = self.lmbda * (1.0 - similarity)
            result["ms_ssim"] = similarity

        result.update(loss=distortion + bpp_loss, distortion=distortion, bpp_loss=bpp_loss)
        if len(rates) > 1:
            result.update({f"bpp_{name}": rate for name, rate in rates.items()})
        return result

    @staticmethod
    def task_losses(losses: Mapping[str, Tensor]) -> Tensor:
        """The task-loss vector ``[distortion, bpp_loss]`` (order: ``TASK_NAMES``) of a result."""
        return torch.stack([losses[name] for name in TASK_NAMES])

    def extra_repr(self) -> str:
        return f"lmbda={self.lmbda}, metric={self.metric!r}"


SCALE_NAMES = ("s1", "s2", "s3")


def scale_rates(output: Mapping[str, Any], num_pixels: int) -> dict[str, Tensor]:
    """Rate of each HPCM coding scale and of z, in bits per pixel, with gradients.

    The rate of y separates exactly into the elements coded at s1, s2 and s3 (the model's
    ``y_scale_map``), so ``bpp_s1 + bpp_s2 + bpp_s3 + bpp_z`` is the total rate.
    """
    bits = -torch.log2(output["likelihoods"]["y"])
    scale_map = output["y_scale_map"].expand_as(bits)
    rates = {
        f"bpp_{name}": bits.masked_fill(scale_map != k, 0.0).sum() / num_pixels
        for k, name in enumerate(SCALE_NAMES)
    }
    rates["bpp_z"] = bits_from_likelihoods(output["likelihoods"]["z"]) / num_pixels
    return rates
