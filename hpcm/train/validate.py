"""Validation on the test images: padded as in the official test protocol, cropped back, the
training criterion with deterministic rounding (eval mode); under DDP each rank takes its share
of the images and the sums are reduced."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hpcm.codec.model import SIZE_MULTIPLE, crop_center, pad_to_multiple
from hpcm.train.distributed import DistContext
from hpcm.train.losses import RateDistortionLoss


@torch.no_grad()
def validate(
    model: nn.Module,
    criterion: RateDistortionLoss,
    test: DataLoader,
    names: Sequence[str],
    dist: DistContext,
    device: torch.device,
    lockstep: bool = False,
) -> dict[str, float]:
    """Mean test metrics ``test/<name>`` over the test images (bpp counts the original pixels).

    ``lockstep`` (FSDP, whose forward gathers the weights from all ranks): every rank runs as
    many forwards as the rank with the most test batches, the extra ones on a blank image whose
    results are dropped."""
    was_training = model.training
    model.eval()
    sums, count = None, 0
    share = _share(test, dist)
    if lockstep:
        most = math.ceil(math.ceil(len(test.dataset) / dist.world_size) / test.batch_size)
        for _ in range(most - len(share)):
            model(torch.zeros(1, 3, SIZE_MULTIPLE, SIZE_MULTIPLE, device=device))
    for x in share:
        x = x.to(device, non_blocking=True)
        out = model(pad_to_multiple(x))
        out["x_hat"] = crop_center(out["x_hat"], x.shape[-2:])
        losses = criterion(out, x)
        values = torch.stack([losses[n].detach() for n in names]) * x.shape[0]
        sums = values if sums is None else sums + values
        count += x.shape[0]
    model.train(was_training)
    if dist.enabled:
        sums, count = _reduce(sums, count, len(names), dist, device)
    means = (sums / count).tolist()
    return {f"test/{n}": v for n, v in zip(names, means, strict=True)}


def _share(test: DataLoader, dist: DistContext) -> DataLoader:
    """The test loader, or under DDP one over every ``world_size``-th image from ``rank``."""
    if not dist.enabled:
        return test
    share = list(range(dist.rank, len(test.dataset), dist.world_size))
    return DataLoader(
        test.dataset,
        batch_size=test.batch_size,
        sampler=share,
        num_workers=test.num_workers,
        pin_memory=test.pin_memory,
    )


def _reduce(
    sums: Tensor | None, count: int, n: int, dist: DistContext, device: torch.device
) -> tuple[Tensor, int]:
    """Sums and image count over all ranks (a rank may have had no image)."""
    total = torch.zeros(n + 1, dtype=torch.float64, device=device)
    if sums is not None:
        total[:-1] = sums.to(torch.float64)
    total[-1] = count
    dist.all_reduce_sum(total)
    return total[:-1], int(total[-1].item())
