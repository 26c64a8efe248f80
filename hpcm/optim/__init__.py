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

from hpcm.optim.balancer import Balancer, FAMOBalancer, PlainBalancer, QPBalancer, StepProbe
from hpcm.optim.cautious import CautiousAdam
from hpcm.optim.famo import FAMOWeighting
from hpcm.optim.qp import combine_gradients_qp, qp_weights, snapshot_grads

__all__ = [
    "Balancer",
    "CautiousAdam",
    "FAMOBalancer",
    "FAMOWeighting",
    "PlainBalancer",
    "QPBalancer",
    "StepProbe",
    "combine_gradients_qp",
    "qp_weights",
    "snapshot_grads",
]
