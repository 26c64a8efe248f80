"""One DDP (or FSDP) worker for tests/test_ddp.py, started by ``torchrun``.

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT_DIR OVERRIDE ...

Runs ``hpcm.train.build.train`` with the overrides plus ``paths.run_dir=OUT_DIR/run<RANK>`` (a
different directory per rank, as Hydra's timestamped run directories can be), then writes this
rank's final model weights, FAMO state and the first local task losses it balanced to
``OUT_DIR/rank<RANK>.pt``, so the test can compare the ranks.

``HPCM_TEST_SIGINT=RANK:STEP`` sends SIGINT to rank RANK during its step STEP (1-based); a run
stopped by a signal writes its state too (with the exit status it would end with) and exits 0.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from torch.distributed.tensor import DTensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpcm.configs import CONF_DIR
from hpcm.optim import FAMOWeighting
from hpcm.train import build as training
from hpcm.train import loop as engine
from hpcm.train.interrupt import TrainingInterrupted


def _whole(value: torch.Tensor) -> torch.Tensor:
    """A CPU copy of a tensor, gathered from all ranks when FSDP shards it (a collective)."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return value.detach().cpu().clone()


def main(out_dir: Path, overrides: list[str]) -> None:
    rank = int(os.environ["RANK"])
    overrides = [*overrides, f"paths.run_dir={out_dir / f'run{rank}'}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)

    first_losses: list[torch.Tensor] = []
    combine = FAMOWeighting.combine

    def recording_combine(self: FAMOWeighting, losses: torch.Tensor) -> torch.Tensor:
        if not first_losses:
            first_losses.append(losses.detach().clone())  # this rank's own (local) losses
        return combine(self, losses)

    fit, step = engine.Trainer.fit, engine.Trainer.train_step
    signal_rank, signal_step = map(int, os.environ.get("HPCM_TEST_SIGINT", "-1:0").split(":"))

    def step_with_signal(self: engine.Trainer, x: torch.Tensor) -> torch.Tensor | None:
        if rank == signal_rank and self.progress.global_step + 1 == signal_step:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, x)

    def fit_and_dump(self: engine.Trainer) -> float:
        try:
            best, stopped = fit(self), None
        except TrainingInterrupted as error:
            best, stopped = math.nan, error
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
            "exit_code": None if stopped is None else stopped.exit_code,
        }
        torch.save(state, out_dir / f"rank{self.dist.rank}.pt")
        if stopped is not None:
            raise stopped
        return best

    FAMOWeighting.combine = recording_combine  # type: ignore[method-assign]
    engine.Trainer.fit = fit_and_dump  # type: ignore[method-assign]
    engine.Trainer.train_step = step_with_signal  # type: ignore[method-assign]
    try:
        training.train(cfg)
    except TrainingInterrupted:
        pass  # its exit status is in the state written above


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
