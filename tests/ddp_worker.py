"""One DDP (or FSDP) worker for tests/test_ddp.py, started by ``torchrun``.

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT_DIR OVERRIDE ...

Runs ``hpcm.train.build.train`` with the overrides plus ``paths.run_dir=OUT_DIR/run<RANK>`` (a
different directory per rank, as Hydra's timestamped run directories can be), then writes this
rank's final model weights, FAMO state and the first local task losses it balanced to
``OUT_DIR/rank<RANK>.pt``, so the test can compare the ranks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from torch.distributed.tensor import DTensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpcm.optim import FAMOWeighting
from hpcm.train import build as training
from hpcm.train import loop as engine


def _whole(value: torch.Tensor) -> torch.Tensor:
    """A CPU copy of a tensor, gathered from all ranks when FSDP shards it (a collective)."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return value.detach().cpu().clone()


def main(out_dir: Path, overrides: list[str]) -> None:
    rank = int(os.environ["RANK"])
    overrides = [*overrides, f"paths.run_dir={out_dir / f'run{rank}'}"]
    with initialize_config_dir(config_dir=str(ROOT / "hpcm" / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)

    first_losses: list[torch.Tensor] = []
    combine = FAMOWeighting.combine

    def recording_combine(self: FAMOWeighting, losses: torch.Tensor) -> torch.Tensor:
        if not first_losses:
            first_losses.append(losses.detach().clone())  # this rank's own (local) losses
        return combine(self, losses)

    fit = engine.Trainer.fit

    def fit_and_dump(self: engine.Trainer) -> float:
        best = fit(self)
        state: dict[str, Any] = {
            "rank": self.dist.rank,
            "world_size": self.dist.world_size,
            "ddp": type(self.train_model).__name__,
            "global_step": self.progress.global_step,
            "model": {k: _whole(v) for k, v in self.model.state_dict().items()},
            "famo": None if self.balancer is None else self.balancer.state_dict(),
            "first_local_losses": first_losses[0] if first_losses else None,
            "sampler": (self.loaders.train.sampler.num_replicas, self.loaders.train.sampler.rank),
            "best": best,
        }
        torch.save(state, out_dir / f"rank{self.dist.rank}.pt")
        return best

    FAMOWeighting.combine = recording_combine  # type: ignore[method-assign]
    engine.Trainer.fit = fit_and_dump  # type: ignore[method-assign]
    training.train(cfg)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
