"""Building a training run from the composed Hydra config, and the run itself.

``build_trainer`` turns ``conf/train.yaml`` into a :class:`hpcm.engine.Trainer` (model, loss,
optimizer, task balancer, data, DDP context); ``train`` is what ``python train.py`` runs.
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

from hpcm.balancing import QPWeighting, check_lower_bounds, task_names
from hpcm.checkpoint import CheckpointError, load_model
from hpcm.data import DataError, build_dataloaders
from hpcm.distributed import (
    DistContext,
    DistributedError,
    cleanup,
    init_distributed,
    local_device,
)
from hpcm.engine import (
    LAST_CHECKPOINT,
    RESOLVED_CONFIG,
    ConfigError,
    Trainer,
    resolve_device,
)
from hpcm.losses import RateDistortionLoss
from hpcm.optim import FAMOWeighting, build_base_optimizer

log = logging.getLogger(__name__)

BALANCERS = ("famo", "qp")


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


# ----------------------------------------------------------------------------- building
def build_optimizer(cfg: DictConfig, params: Any) -> torch.optim.Optimizer:
    """The model optimizer of an ``optimizer`` config group."""
    kwargs = OmegaConf.to_container(cfg.get("kwargs") or {}, resolve=True)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    if cfg.base == "adam":  # torch.optim.Adam has no cautious rescale cap
        kwargs.pop("max_scale", None)
    try:
        return build_base_optimizer(cfg.base, params, float(cfg.lr), **kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"optimizer: {error}") from None


def build_balancer(cfg: DictConfig, device: torch.device) -> FAMOWeighting | QPWeighting | None:
    """The task weighting of an ``optimizer`` config group (None for plain R + lambda*D)."""
    if cfg.balance is None:
        return None
    if cfg.balance not in BALANCERS:
        raise ConfigError(
            f"unknown optimizer.balance {cfg.balance!r}; choose from {', '.join(BALANCERS)}"
        )
    try:
        names = task_names(str(cfg.get("tasks") or "rd"))
        check_lower_bounds(list(cfg.min_losses), names)
        if cfg.balance == "qp":
            if len(names) != 2:
                raise ValueError("balance=qp balances two tasks: use tasks=rd")
            return QPWeighting(list(cfg.min_losses))
        return FAMOWeighting(
            n_tasks=len(names),
            gamma=float(cfg.gamma),
            w_lr=float(cfg.w_lr),
            min_losses=list(cfg.min_losses),
            device=device,
        )
    except ValueError as error:
        raise ConfigError(f"optimizer: {error}") from None


def init_weights(model: nn.Module, source: str) -> None:
    """Start ``model`` from the weights of a project or official HPCM checkpoint (``init_from``,
    for fine-tuning); the checkpoint must hold the same model and widths."""
    loaded = load_model(source, name=model.name, update=False)
    if loaded.config != model.config:
        raise CheckpointError(
            f"init_from {source}: the checkpoint's {loaded.name} has other widths than the "
            "configured model"
        )
    model.load_state_dict(loaded.state_dict())
    log.info("initialised the weights from %s", source)


def setup_distributed(cfg: DictConfig) -> DistContext:
    """Join the torchrun process group when ``trainer.ddp`` (else a one-process context)."""
    t = cfg.trainer
    device = resolve_device(str(t.device))
    try:
        return init_distributed(
            bool(t.get("ddp", False)), device.type, str(t.get("ddp_backend") or "auto")
        )
    except DistributedError as error:
        raise ConfigError(str(error)) from None


def build_trainer(
    cfg: DictConfig, run_dir: str | Path | None = None, dist: DistContext | None = None
) -> Trainer:
    """Model, loss, optimizer, task balancer and data loaders from a composed config."""
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.paths.run_dir)
    dist = dist if dist is not None else setup_distributed(cfg)
    device = local_device(resolve_device(str(cfg.trainer.device)), dist)
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
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    balancer = build_balancer(cfg.optimizer, device)
    if dist.enabled and isinstance(balancer, FAMOWeighting):
        balancer.reduce_fn = dist.all_reduce_mean  # the same task weights on every rank
    d = cfg.data
    try:
        loaders = build_dataloaders(
            name=d.name,
            train_dir=d.get("train_dir"),
            test_dir=d.get("test_dir"),
            crop_size=d.crop_size,
            test_crop_size=d.get("test_crop_size"),
            batch_size=int(d.batch_size),
            test_batch_size=int(d.get("test_batch_size", 1)),
            num_workers=int(d.get("num_workers", 0)),
            seed=int(cfg.seed),
            samples_per_epoch=int(d.get("samples_per_epoch") or 1),
            pin_memory=device.type == "cuda",
            drop_last=bool(d.get("drop_last", False)),
            num_replicas=dist.world_size,
            rank=dist.rank,
        )
    except DataError:
        raise
    except ValueError as error:
        raise ConfigError(f"data: {error}") from None
    if dist.enabled:  # each rank its own noise stream (the weights are initialised already)
        torch.manual_seed(dist.noise_seed(int(cfg.seed)))
    return Trainer(cfg, model, criterion, optimizer, loaders, device, run_dir, balancer, dist)


def train(cfg: DictConfig) -> float:
    """The whole run of ``python train.py``: returns the best validation RD loss (what the
    Optuna sweeper minimises; NaN for a run that never gave a finite one)."""
    try:
        run_dir = Path(str(cfg.paths.run_dir))
    except OmegaConfBaseException:
        raise ConfigError("paths.run_dir cannot be resolved: set paths.run_dir=DIR") from None
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
