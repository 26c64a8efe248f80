"""From the composed Hydra config to a ready :class:`hpcm.train.loop.Trainer`, and the run itself.

``build_trainer`` turns ``conf/train.yaml`` into a trainer (model, loss, optimizer, balancer,
data, DDP context, speed options); ``train`` is what ``python train.py`` runs. Values the model
constrains are checked here, before any data is loaded, so that a bad value is a one-line
:class:`ConfigError` rather than a traceback at the first step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
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
from hpcm.optim.balancer import Balancer
from hpcm.run_layout import CONFIG, LAST_CHECKPOINT, finished_result, mark_finished
from hpcm.train.data import DataError, as_size
from hpcm.train.distributed import (
    DistContext,
    DistributedError,
    cleanup,
    init_distributed,
    local_device,
    shard_fsdp,
)
from hpcm.train.interrupt import StopRequest
from hpcm.train.loop import Trainer
from hpcm.train.losses import RateDistortionLoss, task_names
from hpcm.train.memory import estimate_memory
from hpcm.train.speed import SpeedOptions, apply_global_settings

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration that cannot be run (unknown name, missing value, bad resume target)."""


# What a finished run shows (trainer.showcase): called with the config, the run directory and
# the test images.
Showcase = Callable[[DictConfig, Path, Iterable[torch.Tensor]], None]

# Errors caused by what the user typed or pointed at: reported in one line by the entrypoint.
USER_ERRORS = (ConfigError, DataError, CheckpointError, DeviceError, OmegaConfBaseException)


def resume_mode(resume: Any, multirun: bool) -> Any:
    """``resume`` with its default (null) made explicit: ``auto`` in a multirun (sweeps,
    searches, the SLURM and joblib launchers), ``false`` in a single run."""
    if resume is None:
        return "auto" if multirun else False
    if isinstance(resume, str) and resume.lower() in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[resume.lower()]
    return resume


def showcase_wanted(showcase: Any, multirun: bool) -> bool:
    """``trainer.showcase`` with its default (null) made explicit: on for a single run, off in
    a multirun (each trial of a sweep or search would code the test images and a JPEG ladder
    that nobody asked for there); true or false force it either way."""
    if showcase is None:
        return not multirun
    return bool(showcase)


def _find_resume(resume: Any, run_dir: Path) -> Path | None:
    if resume is False:
        return None
    if resume == "auto":  # the same command continues a run or starts it: say which
        path = run_dir / LAST_CHECKPOINT
        if path.is_file():
            log.info("resume=auto: continuing from %s", path)
            return path
        log.info("resume=auto: no %s yet, starting a fresh run", path)
        return None
    if resume is True:
        path = run_dir / LAST_CHECKPOINT
        if not path.is_file():
            raise ConfigError(
                f"resume=true but {path} does not exist; continue an old run with "
                "hydra.run.dir=OLD_RUN_DIR resume=true, pass resume=PATH, or use resume=auto "
                "(continue when there is a checkpoint, else start fresh)"
            )
        return path
    path = Path(str(resume))
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"checkpoint to resume not found: {path}")
    return path


# ----------------------------------------------------------------------------- checks
def _number(value: Any, name: str, low: float, kind: type = int, optional: bool = False):
    """``value`` (the config key ``name``) as ``kind``, finite and at least ``low``; ``None``
    passes when ``optional``. Anything else is a one-line :class:`ConfigError`."""
    if value is None and optional:
        return None
    try:
        if isinstance(value, bool) or (kind is int and float(value) != int(value)):
            raise ValueError
        number = kind(value)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {value}") from None
    if not math.isfinite(number) or number < low:
        raise ConfigError(f"{name} must be >= {low}{' or null' if optional else ''}, got {value}")
    return number


def _size(d: DictConfig, key: str, multiple: int) -> None:
    value = d.get(key)
    if value is None and key == "test_crop_size":  # whole test images
        return
    try:
        size = as_size(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"data.{key}={value}: {error}") from None
    if size[0] % multiple or size[1] % multiple:
        raise ConfigError(
            f"data.{key}={value}: HPCM trains on crops whose sides are multiples of {multiple}"
        )


def _check_lr_schedule(schedule: DictConfig) -> None:
    name = "trainer.lr_schedule"
    milestones = [_number(m, f"{name}.milestones", 0) for m in schedule.milestones]
    if any(_number(f, f"{name}.factors", 0.0, float) == 0 for f in schedule.factors):
        raise ConfigError(f"{name}.factors must be > 0, got {list(schedule.factors)}")
    if len(milestones) != len(schedule.factors):
        raise ConfigError(f"{name}: milestones and factors differ in length")
    if milestones != sorted(milestones):
        raise ConfigError(f"{name}.milestones must be increasing, got {milestones}")
    if milestones and milestones[0] == 0 and float(schedule.factors[0]) != 1:
        raise ConfigError(
            f"{name}: the run starts at optimizer.lr, so a milestone at epoch 0 has factor 1, "
            f"got {schedule.factors[0]} (set optimizer.lr instead)"
        )
    if schedule.scale_to_run:
        _number(schedule.reference_epochs, f"{name}.reference_epochs", 1)


def check_config(cfg: DictConfig) -> None:
    """One-line errors for every numeric value the model and the run constrain, before any
    data is loaded (else they fail at the first step or epoch, with a traceback)."""
    t, d, o = cfg.trainer, cfg.data, cfg.optimizer
    missing = [f"data.{key}" for key in d if OmegaConf.is_missing(d, key)]
    if missing:  # data=folder's folders, data=flickr2w's root
        raise ConfigError(f"{' and '.join(missing)} must be set, e.g. {missing[0]}=DIR")
    for key in ("epochs", "val_every_n_epochs", "save_every_n_epochs", "log_every_n_steps"):
        _number(t[key], f"trainer.{key}", 1)
    _number(t.max_steps_per_epoch, "trainer.max_steps_per_epoch", 1, optional=True)
    _check_lr_schedule(t.lr_schedule)
    for key in ("batch_size", "test_batch_size"):
        _number(d[key], f"data.{key}", 1)
    _number(d.num_workers, "data.num_workers", 0)
    _number(d.get("samples_per_epoch"), "data.samples_per_epoch", 1, optional=True)
    _size(d, "crop_size", SIZE_MULTIPLE)
    _size(d, "test_crop_size", 1)  # validation pads test crops to multiples of 256
    _number(o.lr, "optimizer.lr", 0.0, float)  # 0: frozen weights (a valid probe)
    # 0 or null: no clipping (CompressAI's examples/train.py: clip only when > 0)
    _number(o.clip_max_norm, "optimizer.clip_max_norm", 0.0, float, optional=True)
    if _number(cfg.lmbda, "lmbda", 0.0, float) == 0:
        raise ConfigError("lmbda must be > 0")
    _number(cfg.seed, "seed", 0)
    if bool(t.fsdp) and not bool(t.ddp):
        raise ConfigError("trainer.fsdp=true needs trainer.ddp=true (use trainer=fsdp)")
    if bool(t.fsdp) and t.channels_last is True:
        raise ConfigError(
            "trainer.fsdp=true shards NCHW weights only: set trainer.channels_last=false"
        )


# ----------------------------------------------------------------------------- building
def build_optimizer(cfg: DictConfig, params: Any) -> torch.optim.Optimizer:
    """The model optimizer of an ``optimizer`` config group: ``optimizer.base`` names its class
    with ``_target_`` and holds its keys (``lr`` is ``optimizer.lr``); built on ``params``."""
    try:
        return instantiate(cfg.base, _convert_="all")(params)
    except InstantiationException as error:
        raise ConfigError(f"optimizer: {error.__cause__ or error}") from None
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
    cfg: DictConfig,
    run_dir: str | Path | None = None,
    dist: DistContext | None = None,
    report_memory: bool = False,
) -> Trainer:
    """Model, loss, optimizer, balancer and data loaders from a composed config;
    ``report_memory`` logs the memory estimate of :mod:`hpcm.train.memory` first."""
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.paths.run_dir)
    check_config(cfg)
    dist = dist if dist is not None else setup_distributed(cfg)
    device = local_device(resolve_device(str(cfg.trainer.device)), dist)
    try:
        speed = SpeedOptions.from_config(cfg.trainer, device)
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
    fsdp = dist.enabled and bool(cfg.trainer.fsdp)
    if report_memory and dist.is_main:
        estimate = estimate_memory(model, as_size(cfg.data.crop_size), speed.autocast(device))
        log.info(estimate.line(int(cfg.data.batch_size), dist.world_size if fsdp else 1))
    if fsdp:
        shard_fsdp(model)  # before the optimizer: it must hold the sharded parameters
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    loaders = _build_loaders(cfg, device, dist)
    if dist.enabled:  # each rank its own noise stream (the weights are initialised already)
        torch.manual_seed(dist.noise_seed(int(cfg.seed)))
    return Trainer(
        cfg, model, criterion, optimizer, balancer, loaders, device, run_dir, speed, dist
    )


def _build_loaders(cfg: DictConfig, device: torch.device, dist: DistContext) -> Any:
    """The loaders of the ``data`` config group (its ``_target_`` and keys), with what the run
    adds: the seed, pinned memory on CUDA, this rank's shard."""
    try:
        return instantiate(
            cfg.data,
            seed=int(cfg.seed),
            pin_memory=device.type == "cuda",
            # A compiled step would recompile for a smaller last batch.
            drop_last=bool(cfg.data.drop_last) or bool(cfg.trainer.compile),
            num_replicas=dist.world_size,
            rank=dist.rank,
            _convert_="all",
        )
    except InstantiationException as error:
        if isinstance(error.__cause__, DataError):
            raise error.__cause__ from None
        raise ConfigError(f"data: {error.__cause__ or error}") from None


def train(
    cfg: DictConfig,
    multirun: bool = False,
    show: Showcase | None = None,
    stop: StopRequest | None = None,
) -> float:
    """The whole run of ``python train.py``: returns the best validation RD loss (what the
    Optuna sweeper minimises; NaN for a run that never gave a finite one). ``multirun``: a job
    of ``-m`` (``resume`` then defaults to ``auto``). With ``resume=auto`` a run that finished
    all its epochs is skipped (its best loss is returned). ``show``: what a run that trained all
    its epochs shows when ``trainer.showcase`` is on, called with the config, the run directory
    and the test images (the command passes :func:`hpcm.eval.showcase.show_run`). ``stop``: the
    job's stop request (:mod:`hpcm.train.interrupt`; by default the trainer's own, installed by
    its ``fit``)."""
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
        mode = resume_mode(cfg.resume, multirun)
        done = finished_result(run_dir, int(cfg.trainer.epochs)) if mode == "auto" else None
        if done is not None:
            log.info("resume=auto: %s finished all its epochs already: skipped", run_dir)
            return done
        resume_path = _find_resume(mode, run_dir)
        if dist.is_main:
            (run_dir / CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        trainer = build_trainer(cfg, run_dir, dist, report_memory=True)
        if stop is not None:
            trainer.stop = stop
        if resume_path is not None:
            trainer.resume(resume_path)
        log.info("run directory: %s (device %s)", run_dir, trainer.device)
        if dist.is_main:
            trainer.start_tracking(resumed=resume_path is not None)
        try:
            best = trainer.fit()
        finally:
            trainer.close()
        if dist.is_main:
            mark_finished(run_dir, trainer.epochs, best)
            if show is not None and showcase_wanted(cfg.trainer.showcase, multirun):
                show(cfg, run_dir, trainer.loaders.test)
        return best
    finally:
        cleanup()
