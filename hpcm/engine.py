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
              (optimizer.update_mode: cheaper subbatch / next_batch, hpcm/update_modes.py)

Per-step metrics stay on the device and are read back every ``log_every_n_steps``; the only
per-step host sync is the finiteness check that decides whether the batch is skipped.

Under DDP (``trainer.ddp``, hpcm/distributed.py, docs/scale.md) the gradients, the Balanced task
losses and the skip decision are averaged or agreed over the processes; rank 0 writes. Building a
run from the config, and the run itself (``train``), are in hpcm/training.py.
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
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hpcm.accel import SpeedOptions
from hpcm.balancing import (
    QPWeighting,
    task_names,
    task_vector,
    weight_metric_name,
)
from hpcm.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_torch_save,
    model_checkpoint,
    safe_torch_load,
)
from hpcm.codec import crop_center, pad_to_multiple
from hpcm.data import DataError, DataLoaders
from hpcm.distributed import (
    DistContext,
    wrap_ddp,
)
from hpcm.losses import RateDistortionLoss
from hpcm.model import HPCMConfig
from hpcm.optim import FAMOWeighting
from hpcm.tracking import Tracker
from hpcm.update_modes import PostStepUpdate, build_post_step

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pth.tar"
BEST_CHECKPOINT = "epoch_best.pth.tar"
BEST_BALANCED_STATE = "balanced_state_best.pth"
RESOLVED_CONFIG = "config.yaml"
# Per-step values averaged over a logging window; each is logged as train/<name>.
STEP_METRICS = ("loss", "distortion", "bpp_loss", "psnr")
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
        balancer: FAMOWeighting | QPWeighting | None = None,
        dist: DistContext | None = None,
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
        self.tasks = task_names(str(cfg.optimizer.get("tasks") or "rd"))
        self.weight_names = [weight_metric_name(t) for t in self.tasks]
        self._window: Tensor | None = None  # on-device sums of metric_names + grad_norm
        self._window_steps = 0  # finite steps in the window
        self._window_batches = 0  # all batches in the window, skipped ones included
        self._weight_warned = False
        self._setup_scale(dist)

    # ------------------------------------------------------------------------- scale and speed
    def _setup_scale(self, dist: DistContext | None) -> None:
        """DDP, the Balanced post-step mode and the speed options (docs/scale.md).

        ``self.model`` stays the bare model (checkpoints, validation); ``train_model`` runs the
        training forward (DDP wrapper, torch.compile), ``plain_forward`` the no-grad
        re-evaluations (compiled, never the DDP wrapper).
        """
        self.dist = dist if dist is not None else DistContext()
        self.speed = SpeedOptions.from_config(self.cfg.trainer)
        self.post_step: PostStepUpdate | None = None
        try:
            self.speed.check(self.device)
            if isinstance(self.balancer, FAMOWeighting):
                self.post_step = build_post_step(self.cfg.optimizer)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        subbatch = self.post_step is not None and self.post_step.name == "subbatch"
        if subbatch and self.tasks != ("distortion", "bpp_loss"):
            raise ConfigError("optimizer.update_mode=subbatch balances tasks=rd only")
        if self.dist.enabled and isinstance(self.balancer, QPWeighting):
            raise ConfigError("trainer.ddp: balance=qp is not supported; use a FAMO optimizer")
        self.speed.prepare_model(self.model)
        self.plain_forward = self.speed.compiled(self.model)
        wrapped = wrap_ddp(self.model, self.dist, self.device)
        self.train_model = (
            self.plain_forward if wrapped is self.model else self.speed.compiled(wrapped)
        )

    def _forward(self, module: Any, x: Tensor) -> dict[str, Any]:
        with self.speed.autocast(self.device):
            output = module(x)
        return self.speed.float_output(output)

    # ------------------------------------------------------------------------- one step
    def train_step(self, x: Tensor) -> Tensor | None:
        """One optimizer step on batch ``x``; returns the detached values of ``metric_names``
        plus the gradient norm, or None when the batch was skipped as non-finite."""
        x = self.speed.batch(x, self.device)  # scale: channels_last when configured
        famo = isinstance(self.balancer, FAMOWeighting)
        noise = rng_state(self.device) if famo else None
        output = self._forward(self.train_model, x)  # scale: DDP, compile, bf16 autocast
        losses = self.criterion(output, x)
        objective = losses["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        if isinstance(self.balancer, QPWeighting):  # two backward passes, combined in place
            self.balancer.backward(self._task_losses(losses, output, x), self.params)
        else:
            if famo:
                objective = self.balancer.combine(self._task_losses(losses, output, x))
            objective.backward()
        if self.clip_max_norm is not None:  # the only clip, same for both optimizers
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_max_norm)
        else:
            norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.params if p.grad is not None]
            )
        finite = torch.isfinite(objective) & torch.isfinite(losses["loss"]) & torch.isfinite(norm)
        if not self.dist.all_true(finite):  # the one per-step sync, agreed by all DDP ranks
            self.optimizer.zero_grad(set_to_none=True)
            self._report_skip()
            return None
        self.optimizer.step()
        if famo:
            # Post-step losses (optimizer.update_mode, hpcm/update_modes.py): by default the
            # same batch with the same quantization noise and the updated weights.
            self.post_step.update(
                self.balancer,
                self.criterion,
                x,
                output,
                forward=lambda batch: self._forward(self.plain_forward, batch),
                replay=replay_rng(noise, self.device),
                tasks=self._task_losses,
            )
        values = [losses[name].detach() for name in self.metric_names]
        return torch.stack([*values, norm.detach().to(values[0].dtype)])

    def _task_losses(self, losses: dict[str, Tensor], output: dict, x: Tensor) -> Tensor:
        return task_vector(losses, output, self.tasks, x.shape[0] * x.shape[2] * x.shape[3])

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
            window = self.dist.all_reduce_mean(self._window)  # DDP: the ranks' mean
            means = (window / self._window_steps).tolist()  # one sync per window
            names = [*self.metric_names, "grad_norm"]
            record.update({f"train/{n}": v for n, v in zip(names, means, strict=True)})
        self._window, self._window_steps, self._window_batches = None, 0, 0
        record["train/lr"] = self.optimizer.param_groups[0]["lr"]
        record["train/skipped_batches"] = float(self.progress.skipped_batches)
        if self.balancer is not None:
            weights = self.balancer.weights.tolist()
            record.update(dict(zip((f"train/{n}" for n in self.weight_names), weights)))
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
                self.weight_names[top],
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
        for x in self._test_batches():  # DDP: this rank's share of the test images
            x = x.to(self.device, non_blocking=True)
            out = self.model(pad_to_multiple(x))
            out["x_hat"] = crop_center(out["x_hat"], x.shape[-2:])
            losses = self.criterion(out, x)
            values = torch.stack([losses[n].detach() for n in names]) * x.shape[0]
            sums = values if sums is None else sums + values
            count += x.shape[0]
        self.model.train()
        if self.dist.enabled:
            sums, count = self._reduce_test(sums, count)
        means = (sums / count).tolist()
        return {f"test/{n}": v for n, v in zip(names, means, strict=True)}

    def _test_batches(self) -> Any:
        """The test loader, or under DDP one over every ``world_size``-th image from ``rank``."""
        test = self.loaders.test
        if not self.dist.enabled:
            return test
        share = list(range(self.dist.rank, len(test.dataset), self.dist.world_size))
        return torch.utils.data.DataLoader(
            test.dataset,
            batch_size=test.batch_size,
            sampler=share,
            num_workers=test.num_workers,
            pin_memory=test.pin_memory,
        )

    def _reduce_test(self, sums: Tensor | None, count: int) -> tuple[Tensor, int]:
        """Sums and image count over all ranks (a rank may have had no image)."""
        total = torch.zeros(len(self.metric_names) + 1, dtype=torch.float64, device=self.device)
        if sums is not None:
            total[:-1] = sums.to(torch.float64)
        total[-1] = count
        self.dist.all_reduce_sum(total)
        return total[:-1], int(total[-1].item())

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
                disable=not t.progress_bar or not self.dist.is_main,
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
        if self.post_step is not None:  # e.g. the loss average of update_mode=next_batch
            ckpt["post_step"] = {"mode": self.post_step.name, **self.post_step.state_dict()}
        return ckpt

    def save(self, epoch: int, is_best: bool, periodic: bool) -> None:
        """Atomic writes: best, every ``save_every_n_epochs`` and ``last.pth.tar`` (written last,
        so that a resume never starts from a state older than the other files)."""
        ckpt = self.state_dict(epoch)
        if self.dist.enabled:  # a collective: every rank calls save(), rank 0 alone writes
            ckpt["rng_ranks"] = self.dist.gather_objects(ckpt["rng"])
            if not self.dist.is_main:
                return
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
        keys = ("balance", "tasks", "gamma", "w_lr", "min_losses")
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
        self._resume_scale(ckpt)
        self._resume_run_id = ckpt.get("wandb_run_id")
        log.info("resumed from %s (epoch %d done)", path, int(ckpt["epoch"]))

    def _resume_scale(self, ckpt: dict[str, Any]) -> None:
        """Per-rank noise streams (DDP) and the post-step mode's state of a checkpoint."""
        if self.dist.enabled:
            ranks = ckpt.get("rng_ranks")
            if ranks is not None and len(ranks) == self.dist.world_size:
                self._resume_rng = ranks[self.dist.rank]
            else:  # saved by another number of processes: fresh, distinct noise streams
                log.warning(
                    "checkpoint saved by %s process(es), this run has %d: the noise streams "
                    "restart",
                    len(ranks) if ranks else 1,
                    self.dist.world_size,
                )
                self._resume_rng = None
                seed = int(self.cfg.seed) + self.progress.global_step
                torch.manual_seed(self.dist.noise_seed(seed))
        saved = ckpt.get("post_step")
        if self.post_step is not None and saved and saved.get("mode") == self.post_step.name:
            self.post_step.load_state_dict(saved)

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
