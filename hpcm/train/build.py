"""From the composed Hydra config to a ready :class:`hpcm.train.loop.Trainer`, and the run itself.

``build_trainer`` turns ``conf/train.yaml`` into a trainer (model, loss, optimizer, balancer,
data, DDP context, speed options); ``train`` is what ``python train.py`` runs. Values the model
constrains are checked here, before any data is loaded, so that a bad value is a one-line
:class:`ConfigError` rather than a traceback at the first step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from hpcm.codec.checkpoint import CheckpointError, check_same_model, load_model
from hpcm.codec.model import SIZE_MULTIPLE
from hpcm.device import DeviceError, resolve_device
from hpcm.optim import build_base_optimizer
from hpcm.optim.balancer import Balancer
from hpcm.train.data import DataError, as_size, build_dataloaders
from hpcm.train.distributed import (
    DistContext,
    DistributedError,
    cleanup,
    init_distributed,
    local_device,
)
from hpcm.train.loop import Trainer
from hpcm.train.losses import RateDistortionLoss, task_names
from hpcm.train.speed import SpeedOptions, apply_global_settings
from hpcm.train.state import LAST_CHECKPOINT

log = logging.getLogger(__name__)

RESOLVED_CONFIG = "config.yaml"


class ConfigError(ValueError):
    """A configuration that cannot be run (unknown name, missing value, bad resume target)."""


# Errors caused by what the user typed or pointed at: reported in one line by the entrypoint.
USER_ERRORS = (ConfigError, DataError, CheckpointError, DeviceError, OmegaConfBaseException)


def _find_resume(resume: Any, run_dir: Path) -> Path | None:
    if resume is None or resume is False:
        return None
    if resume is True:
        path = run_dir / LAST_CHECKPOINT
        if not path.is_file():
            raise ConfigError(
                f"resume=true but {path} does not exist; continue an old run with "
                "hydra.run.dir=OLD_RUN_DIR resume=true, or pass resume=PATH"
            )
        return path
    path = Path(str(resume))
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"checkpoint to resume not found: {path}")
    return path


# ----------------------------------------------------------------------------- checks
def check_config(cfg: DictConfig) -> None:
    """One-line errors for values that could only fail later (at the first step or epoch)."""
    t = cfg.trainer
    if int(t.epochs) < 1 or int(t.val_every_n_epochs) < 1 or int(t.save_every_n_epochs) < 1:
        raise ConfigError("trainer.epochs, val_every_n_epochs, save_every_n_epochs must be >= 1")
    if int(t.log_every_n_steps) < 1:
        raise ConfigError("trainer.log_every_n_steps must be >= 1")
    schedule = t.lr_schedule
    if len(schedule.milestones) != len(schedule.factors):
        raise ConfigError("trainer.lr_schedule: milestones and factors differ in length")
    d = cfg.data
    if int(d.batch_size) < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {d.batch_size}")
    try:
        crop = as_size(d.crop_size)
    except ValueError as error:
        raise ConfigError(f"data.crop_size: {error}") from None
    if crop[0] % SIZE_MULTIPLE or crop[1] % SIZE_MULTIPLE:
        raise ConfigError(
            f"data.crop_size={d.crop_size}: HPCM trains on crops whose sides are multiples of "
            f"{SIZE_MULTIPLE}"
        )


# ----------------------------------------------------------------------------- building
def build_optimizer(cfg: DictConfig, params: Any) -> torch.optim.Optimizer:
    """The model optimizer of an ``optimizer`` config group (``base`` and its ``kwargs``)."""
    kwargs = OmegaConf.to_container(cfg.kwargs, resolve=True)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    try:
        return build_base_optimizer(cfg.base, params, float(cfg.lr), **kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"optimizer: {error}") from None


def build_balancer(cfg: DictConfig, dist: DistContext | None = None) -> Balancer:
    """The balancer of an ``optimizer`` config group: ``optimizer.balancer`` names its class
    with ``_target_`` and holds its keys; it weighs the task losses of ``optimizer.tasks``."""
    try:
        names = task_names(str(cfg.tasks))
        reduce_fn = dist.all_reduce_mean if dist is not None and dist.enabled else None
        return instantiate(cfg.balancer, task_names=names, reduce_fn=reduce_fn, _convert_="all")
    except InstantiationException as error:
        raise ConfigError(f"optimizer: {error.__cause__ or error}") from None
    except ValueError as error:
        raise ConfigError(f"optimizer: {error}") from None


def init_weights(model: nn.Module, source: str) -> None:
    """Start ``model`` from the weights of a project or official HPCM checkpoint (``init_from``,
    for fine-tuning); the checkpoint must hold the same model and widths."""
    loaded = load_model(source, name=model.name, update=False)
    check_same_model(f"init_from {source}", loaded.name, loaded.config, model)
    model.load_state_dict(loaded.state_dict())
    log.info("initialised the weights from %s", source)


def setup_distributed(cfg: DictConfig) -> DistContext:
    """Join the torchrun process group when ``trainer.ddp`` (else a one-process context)."""
    t = cfg.trainer
    device = resolve_device(str(t.device))
    try:
        return init_distributed(bool(t.ddp), device.type, str(t.ddp_backend))
    except DistributedError as error:
        raise ConfigError(str(error)) from None


def build_trainer(
    cfg: DictConfig, run_dir: str | Path | None = None, dist: DistContext | None = None
) -> Trainer:
    """Model, loss, optimizer, balancer and data loaders from a composed config."""
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.paths.run_dir)
    check_config(cfg)
    dist = dist if dist is not None else setup_distributed(cfg)
    device = local_device(resolve_device(str(cfg.trainer.device)), dist)
    speed = SpeedOptions.from_config(cfg.trainer)
    try:
        speed.check(device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    balancer = build_balancer(cfg.optimizer, dist)
    torch.manual_seed(int(cfg.seed))  # weight initialisation and the noise stream
    try:
        model = instantiate(cfg.model, _convert_="all")
        criterion = RateDistortionLoss(float(cfg.lmbda), str(cfg.metric))
    except InstantiationException as error:
        raise ConfigError(f"model: {error.__cause__ or error}") from None
    except ValueError as error:
        raise ConfigError(f"loss: {error}") from None
    if cfg.get("init_from"):
        init_weights(model, str(cfg.init_from))
    model.to(device).train()
    speed.prepare_model(model)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    loaders = _build_loaders(cfg, device, dist)
    if dist.enabled:  # each rank its own noise stream (the weights are initialised already)
        torch.manual_seed(dist.noise_seed(int(cfg.seed)))
    return Trainer(
        cfg, model, criterion, optimizer, balancer, loaders, device, run_dir, speed, dist
    )


def _build_loaders(cfg: DictConfig, device: torch.device, dist: DistContext) -> Any:
    d = cfg.data
    try:
        return build_dataloaders(
            name=d.name,
            train_dir=d.get("train_dir"),
            test_dir=d.get("test_dir"),
            crop_size=d.crop_size,
            test_crop_size=d.test_crop_size,
            batch_size=int(d.batch_size),
            test_batch_size=int(d.test_batch_size),
            num_workers=int(d.num_workers),
            seed=int(cfg.seed),
            samples_per_epoch=d.get("samples_per_epoch"),
            pin_memory=device.type == "cuda",
            # A compiled step would recompile for a smaller last batch.
            drop_last=bool(d.drop_last) or bool(cfg.trainer.compile),
            num_replicas=dist.world_size,
            rank=dist.rank,
        )
    except DataError:
        raise
    except ValueError as error:
        raise ConfigError(f"data: {error}") from None


def train(cfg: DictConfig) -> float:
    """The whole run of ``python train.py``: returns the best validation RD loss (what the
    Optuna sweeper minimises; NaN for a run that never gave a finite one)."""
    try:
        run_dir = Path(str(cfg.paths.run_dir))
    except OmegaConfBaseException:
        raise ConfigError("paths.run_dir cannot be resolved: set paths.run_dir=DIR") from None
    apply_global_settings(SpeedOptions.from_config(cfg.trainer))
    dist = setup_distributed(cfg)
    try:
        if dist.enabled:  # rank 0's directory for all (Hydra's timestamps may differ by rank)
            run_dir = Path(dist.broadcast_object(str(run_dir)))
            if not dist.is_main:
                logging.getLogger().setLevel(logging.ERROR)  # rank 0 reports
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        resume_path = _find_resume(cfg.resume, run_dir)
        if dist.is_main:
            (run_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        trainer = build_trainer(cfg, run_dir, dist)
        if resume_path is not None:
            trainer.resume(resume_path)
        log.info("run directory: %s (device %s)", run_dir, trainer.device)
        if dist.is_main:
            trainer.start_tracking(resumed=resume_path is not None)
        try:
            return trainer.fit()
        finally:
            trainer.close()
    finally:
        cleanup()
