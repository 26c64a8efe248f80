"""The learning-rate schedule of a run (``trainer.lr_schedule``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LRSchedule:
    """Piecewise-constant learning rate: ``lr`` (``optimizer.lr``) until the first milestone, then
    ``lr * factors[i]`` from epoch ``milestones[i]`` on."""

    milestones: tuple[int, ...]
    factors: tuple[float, ...]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], epochs: int) -> LRSchedule:
        """Milestones as written, or (``scale_to_run``) moved to the same fractions of
        ``epochs`` as they have of ``reference_epochs`` (official HPCM: 2750/2850/2950 of 3001)."""
        milestones = [int(m) for m in cfg["milestones"]]
        factors = [float(f) for f in cfg["factors"]]
        if len(milestones) != len(factors):
            raise ValueError("trainer.lr_schedule: milestones and factors differ in length")
        if cfg["scale_to_run"]:
            reference = int(cfg["reference_epochs"])
            milestones = [round(m * epochs / reference) for m in milestones]
        return cls(tuple(milestones), tuple(factors))

    def factor(self, epoch: int) -> float:
        factor = 1.0
        for milestone, value in zip(self.milestones, self.factors, strict=True):
            if epoch >= milestone:
                factor = value
        return factor

    def describe(self, lr: float, epochs: int) -> str:
        """The learning rates a run of ``epochs`` epochs at base ``lr`` trains with, e.g.
        ``"0.002 from epoch 0, 0.0006 from epoch 27, 0.0002 from epoch 28, 2e-05 from epoch 29"``."""
        starts = sorted({0, *(m for m in self.milestones if m < epochs)})
        return ", ".join(f"{lr * self.factor(e):.3g} from epoch {e}" for e in starts)
