"""The complete state of a training run: what a checkpoint holds, writing it, restoring it.

A training checkpoint is a project checkpoint (``hpcm.load_model`` reads it) plus everything a
bit-exact resume needs: optimizer moments, the balancer's state (task logits, their Adam moments,
bounds, previous losses, the post-step mode's average), counters, the last test metrics, the
resolved config, the RNG of the noise stream (of every rank under DDP) and the wandb run id.
Every entry loads with ``weights_only=True``; files are written atomically.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from hpcm.codec.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_torch_save,
    check_same_model,
    model_checkpoint,
    read_checkpoint,
)
from hpcm.codec.model import HPCMConfig
from hpcm.files import atomic_write
from hpcm.train.distributed import full_state, is_sharded, load_full_state
from hpcm.train.post_step import rng_state

if TYPE_CHECKING:
    from hpcm.train.loop import Trainer

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pth.tar"
BEST_CHECKPOINT = "epoch_best.pth.tar"
BEST_BALANCED_STATE = "balanced_state_best.pth"
# Written when a run has trained all its epochs: a re-launched sweep skips such runs.
FINISHED = "finished.json"
# The checkpoints that stand for a run directory (evaluation, export), in order of preference.
RUN_CHECKPOINTS = (BEST_CHECKPOINT, LAST_CHECKPOINT)


def run_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint that stands for a run directory: the best one, else the last one; ``None``
    if it holds neither."""
    for name in RUN_CHECKPOINTS:
        if (run_dir / name).is_file():
            return run_dir / name
    return None


@dataclass
class Progress:
    next_epoch: int = 0
    global_step: int = 0
    best_loss: float = math.inf
    skipped_batches: int = 0
    epoch_batches: int = 0  # batches of epoch next_epoch done (a checkpoint written mid-epoch)


def training_checkpoint(trainer: Trainer, epoch: int) -> dict[str, Any]:
    """The checkpoint of ``trainer`` after ``epoch`` (and ``progress.epoch_batches`` batches of
    the next one, for a checkpoint written mid-epoch on a signal)."""
    progress, cfg = trainer.progress, trainer.cfg
    ckpt = model_checkpoint(trainer.model)
    if is_sharded(trainer.model):  # FSDP: gathered whole on rank 0 (a collective)
        ckpt["state_dict"], optimizer = full_state(trainer.model, trainer.optimizer)
        ckpt["fsdp"] = True  # the optimizer state is keyed by parameter name
    else:
        optimizer = trainer.optimizer.state_dict()
    ckpt.update(
        epoch=epoch,
        global_step=progress.global_step,
        best_loss=progress.best_loss,
        skipped_batches=progress.skipped_batches,
        epoch_batches=progress.epoch_batches,
        window=trainer.window.state_dict(),
        optimizer=optimizer,
        balanced=trainer.balancer.state_dict(),
        lr=trainer.optimizer.param_groups[0]["lr"],
        test=dict(trainer.last_test),
        config=OmegaConf.to_container(cfg, resolve=True),
        rng=rng_state(trainer.device),
        wandb_run_id=None if trainer.tracker is None else trainer.tracker.run_id,
    )
    return ckpt


def save(trainer: Trainer, epoch: int, is_best: bool, periodic: bool) -> None:
    """Atomic writes: best, every ``save_every_n_epochs`` and ``last.pth.tar`` (written last,
    so that a resume never starts from a state older than the other files). Under DDP every
    rank calls this (it gathers the ranks' noise streams and open logging windows, in one
    collective) and rank 0 alone writes."""
    ckpt = training_checkpoint(trainer, epoch)
    dist, run_dir = trainer.dist, trainer.run_dir
    if dist.enabled:
        ranks = dist.gather_objects((ckpt["rng"], ckpt["window"]))
        ckpt["rng_ranks"] = [rng for rng, _ in ranks]
        ckpt["window_ranks"] = [window for _, window in ranks]
        if not dist.is_main:
            return
    balanced = None
    if ckpt["balanced"]:  # a balancer with state of its own: also saved alone, small
        optimizer = OmegaConf.to_container(trainer.cfg.optimizer, resolve=True)
        config = {"tasks": optimizer.get("tasks"), **optimizer["balancer"]}
        balanced = {"epoch": epoch, "balanced": ckpt["balanced"], "config": config}
    if is_best:
        atomic_torch_save(ckpt, run_dir / BEST_CHECKPOINT)
        if balanced is not None:
            atomic_torch_save(balanced, run_dir / BEST_BALANCED_STATE)
    if periodic:
        atomic_torch_save(ckpt, run_dir / f"epoch_{epoch}.pth.tar")
        if balanced is not None:
            atomic_torch_save(balanced, run_dir / f"balanced_state_{epoch}.pth")
    atomic_torch_save(ckpt, run_dir / LAST_CHECKPOINT)


# optimizer.base of run configs that named the base optimizer instead of its ``_target_``.
NAMED_BASE_OPTIMIZERS = {"adam": "torch.optim.Adam", "cautious_adam": "hpcm.optim.CautiousAdam"}


def _optimizer_of(config: dict[str, Any]) -> tuple[Any, Any]:
    """The classes of a run config's base optimizer and balancer."""
    optimizer = config.get("optimizer") or {}
    base = optimizer.get("base")
    base = base.get("_target_") if isinstance(base, dict) else NAMED_BASE_OPTIMIZERS.get(base, base)
    return base, (optimizer.get("balancer") or {}).get("_target_")


def resume(trainer: Trainer, path: str | Path) -> None:
    """Restore model, optimizer, balancer, counters and RNG from a checkpoint of :func:`save`;
    refuses (one line) a checkpoint of another model, widths or optimizer."""
    ckpt = read_checkpoint(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project")
    if "optimizer" not in ckpt:
        raise CheckpointError(f"{path} holds no training state (optimizer) to resume")
    config = HPCMConfig.from_dict(ckpt["model_config"])
    check_same_model(str(path), ckpt["model_name"], config, trainer.model)
    sharded = is_sharded(trainer.model)
    if bool(ckpt.get("fsdp")) != sharded:
        raise CheckpointError(
            f"{path} was written with trainer.fsdp={str(not sharded).lower()}: resume it with "
            "the same setting (init_from= takes its weights into any run)"
        )
    ours = OmegaConf.to_container(trainer.cfg, resolve=True)
    saved = ckpt.get("config") or {}
    if _optimizer_of(saved) != _optimizer_of(ours):
        raise CheckpointError(
            f"{path} was trained with optimizer={saved.get('optimizer', {}).get('name')}, this "
            f"run uses optimizer={trainer.cfg.optimizer.name}"
        )
    if sharded:  # FSDP: each rank takes its shards of the whole state
        load_full_state(trainer.model, trainer.optimizer, ckpt["state_dict"], ckpt["optimizer"])
    else:
        trainer.model.load_state_dict(ckpt["state_dict"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.balancer.load_state_dict(ckpt["balanced"])
    trainer.progress = Progress(
        next_epoch=int(ckpt["epoch"]) + 1,
        global_step=int(ckpt["global_step"]),
        best_loss=float(ckpt["best_loss"]),
        skipped_batches=int(ckpt["skipped_batches"]),
        epoch_batches=int(ckpt.get("epoch_batches", 0)),
    )
    trainer.last_test = dict(ckpt.get("test") or {})
    trainer.resume_rng = _rank_rng(trainer, ckpt)
    trainer.resume_run_id = ckpt.get("wandb_run_id")
    dist, windows = trainer.dist, ckpt.get("window_ranks") or [ckpt.get("window")]
    if windows[0] is not None:  # this rank's open logging window, on its device
        window = dict(windows[dist.rank] if len(windows) == dist.world_size else windows[0])
        if window["sums"] is not None:
            window["sums"] = window["sums"].to(trainer.device)
        trainer.window.load_state_dict(window)
    batches = trainer.progress.epoch_batches
    mid = f", {batches} batches of epoch {int(ckpt['epoch']) + 1}" if batches else ""
    log.info("resumed from %s (epoch %d done%s)", path, int(ckpt["epoch"]), mid)


def _rank_rng(trainer: Trainer, ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """This rank's noise stream of a checkpoint (None: start fresh, distinct streams)."""
    dist = trainer.dist
    if not dist.enabled:
        return ckpt["rng"]
    ranks = ckpt.get("rng_ranks")
    if ranks is not None and len(ranks) == dist.world_size:
        return ranks[dist.rank]
    log.warning(
        "checkpoint saved by %s process(es), this run has %d: the noise streams restart",
        len(ranks) if ranks else 1,
        dist.world_size,
    )
    torch.manual_seed(dist.noise_seed(int(trainer.cfg.seed) + trainer.progress.global_step))
    return None


def mark_finished(run_dir: Path, epochs: int, best_loss: float) -> None:
    """Record that the run in ``run_dir`` trained ``epochs`` epochs (atomic write)."""
    best = best_loss if math.isfinite(best_loss) else None  # JSON has no NaN
    text = json.dumps({"epochs": epochs, "best_loss": best}) + "\n"
    atomic_write(run_dir / FINISHED, text.encode("utf-8"))


def finished_result(run_dir: Path, epochs: int) -> float | None:
    """The best loss of a run in ``run_dir`` that trained ``epochs`` epochs or more, else None
    (not finished, or a longer run is asked for)."""
    try:
        done = json.loads((run_dir / FINISHED).read_text(encoding="utf-8"))
        if int(done["epochs"]) < epochs:
            return None
        return math.nan if done["best_loss"] is None else float(done["best_loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
