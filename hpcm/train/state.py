"""Training checkpoints on disk: writing them, and the checks before one is resumed.

A training checkpoint is a project checkpoint (``hpcm.load_model`` reads it) plus everything a
bit-exact resume needs (:meth:`hpcm.train.loop.Trainer.state_dict` builds it):
optimizer moments, the balancer's state (task logits, their Adam moments, bounds, previous
losses, the post-step mode's average), counters, the last test metrics, the resolved config, the
RNG of the noise stream (of every rank under DDP) and the wandb run id. Every entry loads with
``weights_only=True``; files are written atomically, under the names of :mod:`hpcm.run_layout`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from hpcm.codec.checkpoint import atomic_torch_save, check_same_model, read_checkpoint
from hpcm.codec.model import HPCMConfig
from hpcm.codec.state_dict import CHECKPOINT_FORMAT, CheckpointError
from hpcm.run_layout import (
    BEST_BALANCED_STATE,
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    epoch_balanced_state,
    epoch_checkpoint,
)


def write(
    ckpt: dict[str, Any],
    run_dir: Path,
    epoch: int,
    is_best: bool,
    periodic: bool,
    optimizer_cfg: DictConfig,
) -> None:
    """Atomic writes of the checkpoint ``ckpt`` of ``epoch``: best, every
    ``save_every_n_epochs`` and ``last.pth.tar`` (written last, so that a resume never starts
    from a state older than the other files); beside best and periodic ones, the balancer's
    state alone (small) when it has one, with the ``optimizer_cfg`` keys that define it."""
    balanced = None
    if ckpt["balanced"]:
        optimizer = OmegaConf.to_container(optimizer_cfg, resolve=True)
        config = {"tasks": optimizer.get("tasks"), **optimizer["balancer"]}
        balanced = {"epoch": epoch, "balanced": ckpt["balanced"], "config": config}
    if is_best:
        atomic_torch_save(ckpt, run_dir / BEST_CHECKPOINT)
        if balanced is not None:
            atomic_torch_save(balanced, run_dir / BEST_BALANCED_STATE)
    if periodic:
        atomic_torch_save(ckpt, run_dir / epoch_checkpoint(epoch))
        if balanced is not None:
            atomic_torch_save(balanced, run_dir / epoch_balanced_state(epoch))
    atomic_torch_save(ckpt, run_dir / LAST_CHECKPOINT)


# optimizer.base of run configs that named the base optimizer instead of its ``_target_``.
NAMED_BASE_OPTIMIZERS = {"adam": "torch.optim.Adam", "cautious_adam": "hpcm.optim.CautiousAdam"}


def _optimizer_of(config: dict[str, Any]) -> tuple[Any, Any]:
    """The classes of a run config's base optimizer and balancer."""
    optimizer = config.get("optimizer") or {}
    base = optimizer.get("base")
    base = base.get("_target_") if isinstance(base, dict) else NAMED_BASE_OPTIMIZERS.get(base, base)
    return base, (optimizer.get("balancer") or {}).get("_target_")


def read_resumable(path: str | Path, model: nn.Module, sharded: bool, cfg: DictConfig) -> dict:
    """The training checkpoint at ``path``, checked against the run about to resume it: a
    one-line :class:`CheckpointError` for a file of another project, one without training
    state, or one of another model, widths, sharding or optimizer than ``model`` and ``cfg``."""
    ckpt = read_checkpoint(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project")
    if "optimizer" not in ckpt:
        raise CheckpointError(f"{path} holds no training state (optimizer) to resume")
    config = HPCMConfig.from_dict(ckpt["model_config"])
    check_same_model(str(path), ckpt["model_name"], config, model)
    if bool(ckpt.get("fsdp")) != sharded:
        raise CheckpointError(
            f"{path} was written with trainer.fsdp={str(not sharded).lower()}: resume it with "
            "the same setting (init_from= takes its weights into any run)"
        )
    ours = OmegaConf.to_container(cfg, resolve=True)
    saved = ckpt.get("config") or {}
    if _optimizer_of(saved) != _optimizer_of(ours):
        raise CheckpointError(
            f"{path} was trained with optimizer={saved.get('optimizer', {}).get('name')}, this "
            f"run uses optimizer={cfg.optimizer.name}"
        )
    return ckpt
