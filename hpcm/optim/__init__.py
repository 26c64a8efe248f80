"""Optimisers and task balancing for any list of losses (no knowledge of the codec).

- :class:`CautiousAdam`: Adam with the cautious mask (Liang et al., arXiv 2411.16085).
- :mod:`hpcm.optim.balancer`: the :class:`Balancer` protocol the training step calls, and its
  implementations (plain sum, FAMO, QP).
- :class:`FAMOWeighting`: FAMO task weights (arXiv 2306.03072), solution 1 of Balanced R-D
  (arXiv 2502.20161); :mod:`hpcm.optim.famo_updates`: how its post-step losses are measured.
- :func:`combine_gradients_qp`, :func:`qp_weights`: the two-task QP balance, solution 2 of
  Balanced R-D.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from hpcm.optim.balancer import Balancer, FAMOBalancer, PlainBalancer, QPBalancer, StepProbe
from hpcm.optim.cautious import CautiousAdam
from hpcm.optim.famo import FAMOWeighting
from hpcm.optim.qp import combine_gradients_qp, qp_weights, snapshot_grads

BASE_OPTIMIZERS = ("adam", "cautious_adam")


def build_base_optimizer(
    name: str,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    lr: float,
    max_scale: float | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Builds the model optimiser by name: ``"adam"`` (``torch.optim.Adam``) or
    ``"cautious_adam"`` (:class:`CautiousAdam`); ``kwargs`` go to the constructor.

    ``max_scale`` caps cautious Adam's rescale (None: uncapped). Plain Adam masks nothing, so its
    rescale is 1 and the cap does not apply: it is ignored there, which lets an ablation swap
    ``base`` without touching the cap."""
    key = name.lower().replace("-", "_")
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, **kwargs)
    if key == "cautious_adam":
        return CautiousAdam(params, lr=lr, max_scale=max_scale, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {BASE_OPTIMIZERS}")


__all__ = [
    "BASE_OPTIMIZERS",
    "Balancer",
    "CautiousAdam",
    "FAMOBalancer",
    "FAMOWeighting",
    "PlainBalancer",
    "QPBalancer",
    "StepProbe",
    "build_base_optimizer",
    "combine_gradients_qp",
    "qp_weights",
    "snapshot_grads",
]
