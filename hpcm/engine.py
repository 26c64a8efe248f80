"""The training loop: steps with Adam or Balanced R-D, validation, checkpoints, logging, resume.

One step (both optimizers, so the comparison is fair: same data order, noise stream, clip and LR
schedule)::

    forward (training-mode quantization noise) -> [distortion, bpp_loss]
    objective = distortion + bpp_loss               (adam)
              = FAMO combination of the two tasks   (balanced, arXiv 2502.20161 / 2306.03072)
    backward -> one clip of the total gradient norm
    non-finite loss or norm: skip the batch (counted, logged; weights and task weights untouched)
    optimizer step
    balanced: the same batch again under no_grad with the same noise (the RNG state of the step's
              forward is replayed) -> post-step losses -> FAMO weight update

Per-step metrics stay on the device and are read back every ``log_every_n_steps``; the only
per-step host sync is the finiteness check that decides whether the batch is skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hpcm.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_torch_save,
    model_checkpoint,
    safe_torch_load,
)
from hpcm.codec import crop_center, pad_to_multiple
from hpcm.data import DataError, DataLoaders, build_dataloaders
from hpcm.losses import RateDistortionLoss
from hpcm.model import HPCMConfig
from hpcm.optim import FAMOWeighting, build_base_optimizer
from hpcm.tracking import Tracker

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pth.tar"
BEST_CHECKPOINT = "epoch_best.pth.tar"
BEST_BALANCED_STATE = "balanced_state_best.pth"
RESOLVED_CONFIG = "config.yaml"
# Per-step values averaged over a logging window; each is logged as train/<name>.
STEP_METRICS = ("loss", "distortion", "bpp_loss", "psnr")
TASK_WEIGHT_NAMES = ("task_weight_distortion", "task_weight_bpp")
BALANCERS = ("famo",)
# Skipped batches are announced one by one up to this count, then every SKIP_REPORT_EVERY-th.
SKIP_WARNINGS, SKIP_REPORT_EVERY = 10, 100


class ConfigError(ValueError):
    """A configuration that cannot be run (unknown name, missing value, bad resume target)."""


# Errors caused by what the user typed or pointed at: reported in one line by train.py.
USER_ERRORS = (ConfigError, DataError, CheckpointError, OmegaConfBaseException)


# ----------------------------------------------------------------------------- helpers
def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; otherwise any ``torch.device`` string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"unknown trainer.device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but CUDA is not available")
    return device


@dataclass(frozen=True)
class LRSchedule:
    """Piecewise-constant learning rate: ``lr * factors[i]`` from epoch ``milestones[i]`` on."""

    milestones: tuple[int, ...]
    factors: tuple[float, ...]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], epochs: int) -> LRSchedule:
        """Milestones as written, or (``scale_to_run``) moved to the same fractions of
        ``epochs`` as they have of ``reference_epochs`` (official HPCM: 2750/2850/2950 of 3001)."""
        milestones = [int(m) for m in cfg["milestones"]]
        factors = [float(f) for f in cfg["factors"]]
        if len(milestones) != len(factors):
            raise ConfigError("trainer.lr_schedule: milestones and factors differ in length")
        if cfg.get("scale_to_run", False):
            reference = int(cfg["reference_epochs"])
            milestones = [round(m * epochs / reference) for m in milestones]
        return cls(tuple(milestones), tuple(factors))

    def factor(self, epoch: int) -> float:
        factor = 1.0
        for milestone, value in zip(self.milestones, self.factors, strict=True):
            if epoch >= milestone:
                factor = value
        return factor


def rng_state(device: torch.device) -> dict[str, Tensor | None]:
    """The global RNG state that draws quantization noise on ``device`` (plus the CPU's)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: Mapping[str, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextmanager
def replay_rng(state: Mapping[str, Tensor | None], device: torch.device) -> Iterator[None]:
    """Run a block with the RNG at ``state``; afterwards the RNG continues where it was, so a
    replayed forward neither changes nor consumes the noise stream of the training steps."""
    saved = rng_state(device)
    set_rng_state(state, device)
    try:
        yield
    finally:
        set_rng_state(saved, device)


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


# ----------------------------------------------------------------------------- trainer
@dataclass
class Progress:
    next_epoch: int = 0
    global_step: int = 0
    best_loss: float = math.inf
    skipped_batches: int = 0


class Trainer:
    """Trains ``model`` on ``loaders`` as configured by ``cfg`` (the composed ``conf/train.yaml``).

    Build one with :func:`build_trainer`; :meth:`train_step` runs one batch, :meth:`fit` the
    whole run (validation, checkpoints, logging), :meth:`resume` restores a checkpoint first.
    """

    def __init__(
        self,
        cfg: DictConfig,
        model: nn.Module,
        criterion: RateDistortionLoss,
        optimizer: torch.optim.Optimizer,
        loaders: DataLoaders,
        device: torch.device,
        run_dir: Path,
        balancer: FAMOWeighting | None = None,
    ) -> None:
        self.cfg, self.model, self.criterion = cfg, model, criterion
        self.optimizer, self.loaders, self.balancer = optimizer, loaders, balancer
        self.device, self.run_dir = device, Path(run_dir)
        t = cfg.trainer
        self.epochs = int(t.epochs)
        if self.epochs < 1 or int(t.val_every_n_epochs) < 1 or int(t.save_every_n_epochs) < 1:
            raise ConfigError(
                "trainer.epochs, val_every_n_epochs, save_every_n_epochs must be >= 1"
            )
        self.schedule = LRSchedule.from_config(t.lr_schedule, self.epochs)
        self.base_lr = float(cfg.optimizer.lr)
        clip = cfg.optimizer.clip_max_norm
        self.clip_max_norm = float(clip) if clip else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.progress = Progress()
        self.tracker: Tracker | None = None
        self.last_test: dict[str, float] = {}
        self._resume_rng: dict[str, Tensor | None] | None = None
        self._resume_run_id: str | None = None
        self.metric_names = STEP_METRICS + (("ms_ssim",) if criterion.metric == "ms-ssim" else ())
        self._window: Tensor | None = None  # on-device sums of metric_names + grad_norm
        self._window_steps = 0  # finite steps in the window
        self._window_batches = 0  # all batches in the window, skipped ones included
        self._weight_warned = False

    # ------------------------------------------------------------------------- one step
    def train_step(self, x: Tensor) -> Tensor | None:
        """One optimizer step on batch ``x``; returns the detached values of ``metric_names``
        plus the gradient norm, or None when the batch was skipped as non-finite."""
        x = x.to(self.device, non_blocking=True)
        noise = rng_state(self.device) if self.balancer is not None else None
        losses = self.criterion(self.model(x), x)
        if self.balancer is not None:
            objective = self.balancer.combine(self.criterion.task_losses(losses))
        else:
            objective = losses["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if self.clip_max_norm is not None:  # the only clip, same for both optimizers
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_max_norm)
        else:
            norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.params if p.grad is not None]
            )
        finite = torch.isfinite(objective) & torch.isfinite(losses["loss"]) & torch.isfinite(norm)
        if not bool(finite):  # the one per-step sync: a bad batch must not reach any state
            self.optimizer.zero_grad(set_to_none=True)
            self._report_skip()
            return None
        self.optimizer.step()
        if self.balancer is not None:
            # Same batch, same quantization noise, updated weights (spec: Balanced R-D notes).
            with torch.no_grad(), replay_rng(noise, self.device):
                after = self.criterion(self.model(x), x)
            self.balancer.update(self.criterion.task_losses(after))
        values = [losses[name].detach() for name in self.metric_names]
        return torch.stack([*values, norm.detach().to(values[0].dtype)])

    def _report_skip(self) -> None:
        self.progress.skipped_batches += 1
        count = self.progress.skipped_batches
        if count <= SKIP_WARNINGS or count % SKIP_REPORT_EVERY == 0:
            log.warning(
                "skipped batch at step %d: non-finite loss or gradient norm (%d skipped so far; "
                "if this repeats, lower optimizer.clip_max_norm or optimizer.lr, or raise "
                "optimizer.gamma)",
                self.progress.global_step,
                count,
            )

    # ------------------------------------------------------------------------- epochs
    def set_epoch_lr(self, epoch: int) -> float:
        lr = self.base_lr * self.schedule.factor(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def steps_per_epoch(self) -> int:
        steps = len(self.loaders.train)
        cap = self.cfg.trainer.max_steps_per_epoch
        return min(steps, int(cap)) if cap else steps

    def train_epoch(self, epoch: int, bar: tqdm | None = None) -> None:
        self.model.train()
        self.set_epoch_lr(epoch)
        self.loaders.train.sampler.set_epoch(epoch)
        steps, log_every = self.steps_per_epoch(), int(self.cfg.trainer.log_every_n_steps)
        for i, x in enumerate(self.loaders.train):
            if i >= steps:
                break
            values = self.train_step(x)
            if values is not None:
                self._window = values if self._window is None else self._window + values
                self._window_steps += 1
            self._window_batches += 1
            self.progress.global_step += 1
            if self.progress.global_step % log_every == 0:
                self._log_window(epoch, bar)
            if bar is not None:
                bar.update(1)
        self._log_window(epoch, bar)

    def _log_window(self, epoch: int, bar: tqdm | None) -> None:
        if not self._window_batches:
            return
        record: dict[str, float] = {}
        if self._window_steps:
            means = (self._window / self._window_steps).tolist()  # one sync per window
            names = [*self.metric_names, "grad_norm"]
            record.update({f"train/{n}": v for n, v in zip(names, means, strict=True)})
        self._window, self._window_steps, self._window_batches = None, 0, 0
        record["train/lr"] = self.optimizer.param_groups[0]["lr"]
        record["train/skipped_batches"] = float(self.progress.skipped_batches)
        if self.balancer is not None:
            weights = self.balancer.weights.tolist()
            record.update(dict(zip((f"train/{n}" for n in TASK_WEIGHT_NAMES), weights)))
            self._check_weights(weights)
        if self.tracker is not None:
            self.tracker.log(record, self.progress.global_step, epoch)
        if bar is not None and "train/loss" in record:
            bar.set_postfix(
                epoch=epoch,
                loss=f"{record['train/loss']:.4g}",
                bpp=f"{record['train/bpp_loss']:.4g}",
                psnr=f"{record['train/psnr']:.2f}",
            )

    def _check_weights(self, weights: list[float]) -> None:
        limit = self.cfg.optimizer.get("warn_weight_above")
        if limit is None:
            return
        top = max(range(len(weights)), key=weights.__getitem__)
        dominating = weights[top] > float(limit)
        if dominating and not self._weight_warned:
            log.warning(
                "task weight %s = %.3f dominates (> %s): raise optimizer.gamma or lower "
                "optimizer.w_lr to keep the weights nearer 0.5",
                TASK_WEIGHT_NAMES[top],
                weights[top],
                limit,
            )
        self._weight_warned = dominating

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean test metrics (``test/<name>``) with deterministic rounding; images are padded as in
        the official test protocol and cropped back (bpp counts the original pixels)."""
        self.model.eval()
        names = self.metric_names
        sums, count = None, 0
        for x in self.loaders.test:
            x = x.to(self.device, non_blocking=True)
            out = self.model(pad_to_multiple(x))
            out["x_hat"] = crop_center(out["x_hat"], x.shape[-2:])
            losses = self.criterion(out, x)
            values = torch.stack([losses[n].detach() for n in names]) * x.shape[0]
            sums = values if sums is None else sums + values
            count += x.shape[0]
        self.model.train()
        means = (sums / count).tolist()
        return {f"test/{n}": v for n, v in zip(names, means, strict=True)}

    # ------------------------------------------------------------------------- the run
    def fit(self) -> float:
        """Train from ``progress.next_epoch`` to ``trainer.epochs``; returns the best test loss
        (NaN when no validation gave a finite loss, e.g. a diverged run)."""
        t = self.cfg.trainer
        val_every, save_every = int(t.val_every_n_epochs), int(t.save_every_n_epochs)
        if self._resume_rng is not None:  # last, so that nothing built after it draws from it
            set_rng_state(self._resume_rng, self.device)
            self._resume_rng = None
        start = self.progress.next_epoch
        if start >= self.epochs:
            log.info("nothing to train: all %d epochs are done (raise trainer.epochs)", self.epochs)
        steps = self.steps_per_epoch()
        with (
            logging_redirect_tqdm(),  # log lines above the bar, not through it
            tqdm(
                total=self.epochs * steps,
                initial=start * steps,
                disable=not t.progress_bar,
                desc="train",
                dynamic_ncols=True,
            ) as bar,
        ):
            for epoch in range(start, self.epochs):
                self.train_epoch(epoch, bar)
                is_best = False
                if (epoch + 1) % val_every == 0 or epoch == self.epochs - 1:
                    self.last_test = self.validate()
                    loss = self.last_test["test/loss"]
                    is_best = loss < self.progress.best_loss  # False for NaN
                    if is_best:
                        self.progress.best_loss = loss
                    self._log_test(epoch, is_best)
                self.progress.next_epoch = epoch + 1
                self.save(epoch, is_best, periodic=epoch % save_every == 0)
        best = self.progress.best_loss
        return best if math.isfinite(best) else math.nan

    def _log_test(self, epoch: int, is_best: bool) -> None:
        if self.tracker is not None:
            self.tracker.log(self.last_test, self.progress.global_step, epoch)
        m = self.last_test
        log.info(
            "epoch %d: test loss %.4f, bpp %.4f, PSNR %.2f dB%s",
            epoch,
            m["test/loss"],
            m["test/bpp_loss"],
            m["test/psnr"],
            " (best)" if is_best else "",
        )

    # ------------------------------------------------------------------------- checkpoints
    def state_dict(self, epoch: int) -> dict[str, Any]:
        """A project checkpoint (``hpcm.load_model`` reads it) plus all training state; every
        entry loads with ``weights_only=True``."""
        ckpt = model_checkpoint(self.model)
        ckpt.update(
            epoch=epoch,
            global_step=self.progress.global_step,
            best_loss=self.progress.best_loss,
            skipped_batches=self.progress.skipped_batches,
            optimizer=self.optimizer.state_dict(),
            balanced=None if self.balancer is None else self.balancer.state_dict(),
            lr=self.optimizer.param_groups[0]["lr"],
            test=dict(self.last_test),
            config=OmegaConf.to_container(self.cfg, resolve=True),
            rng=rng_state(self.device),
            wandb_run_id=None if self.tracker is None else self.tracker.run_id,
        )
        return ckpt

    def save(self, epoch: int, is_best: bool, periodic: bool) -> None:
        """Atomic writes: best, every ``save_every_n_epochs`` and ``last.pth.tar`` (written last,
        so that a resume never starts from a state older than the other files)."""
        ckpt = self.state_dict(epoch)
        balanced = None
        if self.balancer is not None:
            balanced = {"epoch": epoch, "balanced": ckpt["balanced"], "config": self._balance_cfg()}
        if is_best:
            atomic_torch_save(ckpt, self.run_dir / BEST_CHECKPOINT)
            if balanced is not None:
                atomic_torch_save(balanced, self.run_dir / BEST_BALANCED_STATE)
        if periodic:
            atomic_torch_save(ckpt, self.run_dir / f"epoch_{epoch}.pth.tar")
            if balanced is not None:
                atomic_torch_save(balanced, self.run_dir / f"balanced_state_{epoch}.pth")
        atomic_torch_save(ckpt, self.run_dir / LAST_CHECKPOINT)

    def _balance_cfg(self) -> dict[str, Any]:
        keys = ("balance", "gamma", "w_lr", "min_losses")
        return {k: OmegaConf.to_container(self.cfg.optimizer, resolve=True).get(k) for k in keys}

    def resume(self, path: str | Path) -> None:
        """Restore model, optimizer, task weights (logits, their Adam state, bounds, previous
        losses), counters and RNG from a checkpoint written by :meth:`save`."""
        try:
            ckpt = safe_torch_load(path)
        except Exception as error:  # noqa: BLE001 - any unreadable file gets one clear line
            raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a checkpoint of this project")
        if "optimizer" not in ckpt:
            raise CheckpointError(f"{path} holds no training state (optimizer) to resume")
        name, config = ckpt["model_name"], HPCMConfig.from_dict(ckpt["model_config"])
        if name != self.model.name:
            raise CheckpointError(
                f"{path} holds model {name!r}, this run builds model={self.model.name}"
            )
        if config != self.model.config:
            ours = self.model.config.to_dict()
            diff = [
                f"{k}={v} (this run: {ours[k]})"
                for k, v in config.to_dict().items()
                if v != ours[k]
            ]
            raise CheckpointError(
                f"{path} holds model {name!r} with other sizes: {', '.join(diff)}"
            )
        saved_opt = ckpt.get("config", {}).get("optimizer", {})
        if saved_opt.get("base") != self.cfg.optimizer.base or (
            (ckpt["balanced"] is None) != (self.balancer is None)
        ):
            raise CheckpointError(
                f"{path} was trained with optimizer={saved_opt.get('name')}, this run uses "
                f"optimizer={self.cfg.optimizer.name}"
            )
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.balancer is not None:
            self.balancer.load_state_dict(ckpt["balanced"])
        self.progress = Progress(
            next_epoch=int(ckpt["epoch"]) + 1,
            global_step=int(ckpt["global_step"]),
            best_loss=float(ckpt["best_loss"]),
            skipped_batches=int(ckpt["skipped_batches"]),
        )
        self.last_test = dict(ckpt.get("test") or {})
        self._resume_rng = ckpt["rng"]
        self._resume_run_id = ckpt.get("wandb_run_id")
        log.info("resumed from %s (epoch %d done)", path, int(ckpt["epoch"]))

    def start_tracking(self, resumed: bool = False) -> None:
        cfg = self.cfg
        name = f"{cfg.model.name}_{cfg.optimizer.name}_{cfg.metric}_{cfg.lmbda}"
        self.tracker = Tracker(
            self.run_dir,
            cfg.logger,
            OmegaConf.to_container(cfg, resolve=True),
            run_name=name,
            resume_step=self.progress.global_step if resumed else None,
            run_id=self._resume_run_id,
        )

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None


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


def build_balancer(cfg: DictConfig, device: torch.device) -> FAMOWeighting | None:
    """The task weighting of an ``optimizer`` config group (None for plain R + lambda*D)."""
    if cfg.balance is None:
        return None
    if cfg.balance not in BALANCERS:
        raise ConfigError(f"unknown optimizer.balance {cfg.balance!r}; choose from famo")
    try:
        return FAMOWeighting(
            n_tasks=2,
            gamma=float(cfg.gamma),
            w_lr=float(cfg.w_lr),
            min_losses=list(cfg.min_losses),
            device=device,
        )
    except ValueError as error:
        raise ConfigError(f"optimizer: {error}") from None


def build_trainer(cfg: DictConfig, run_dir: str | Path | None = None) -> Trainer:
    """Model, loss, optimizer, task balancer and data loaders from a composed config."""
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.paths.run_dir)
    device = resolve_device(str(cfg.trainer.device))
    torch.manual_seed(int(cfg.seed))  # weight initialisation and the noise stream
    try:
        model = instantiate(cfg.model, _convert_="all")
        criterion = RateDistortionLoss(float(cfg.lmbda), str(cfg.metric))
    except InstantiationException as error:
        raise ConfigError(f"model: {error.__cause__ or error}") from None
    except ValueError as error:
        raise ConfigError(f"loss: {error}") from None
    model.to(device).train()
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    balancer = build_balancer(cfg.optimizer, device)
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
        )
    except DataError:
        raise
    except ValueError as error:
        raise ConfigError(f"data: {error}") from None
    return Trainer(cfg, model, criterion, optimizer, loaders, device, run_dir, balancer)


def train(cfg: DictConfig) -> float:
    """The whole run of ``python train.py``: returns the best validation RD loss (what the
    Optuna sweeper minimises; NaN for a run that never gave a finite one)."""
    try:
        run_dir = Path(str(cfg.paths.run_dir))
    except OmegaConfBaseException:
        raise ConfigError("paths.run_dir cannot be resolved: set paths.run_dir=DIR") from None
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_path = _find_resume(cfg.resume, run_dir)
    (run_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer = build_trainer(cfg, run_dir)
    if resume_path is not None:
        trainer.resume(resume_path)
    log.info("run directory: %s (device %s)", run_dir, trainer.device)
    trainer.start_tracking(resumed=resume_path is not None)
    try:
        return trainer.fit()
    finally:
        trainer.close()
