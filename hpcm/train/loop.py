"""The training loop: one step, the epochs, validation, checkpoints and logging.

One step, the same for every optimizer (so a comparison is fair: same data order, noise
stream, clip and LR schedule)::

    forward (training-mode quantization noise) -> losses -> task losses
    balancer.backward(task losses)         plain sum (adam), FAMO combination, QP combination
    one clip of the total gradient norm
    non-finite loss or norm: skip the batch (counted, logged; weights and balancer untouched)
    optimizer step
    balancer.after_step(probe)             e.g. FAMO's weight update from post-step losses

Per-step metrics stay on the device and are read back every ``log_every_n_steps``; the only
per-step host sync is the finiteness check that decides whether the batch is skipped, which also
reads whether to stop after the step (:mod:`hpcm.train.interrupt`).

Under DDP (``trainer.ddp``, :mod:`hpcm.train.distributed`) the gradients and the balancer's task
losses are averaged over the processes, and the skip and stop decisions agreed in one small
collective per step (:meth:`DistContext.all_true`); rank 0 writes. Building
a trainer from the config is :mod:`hpcm.train.build`; the checkpoint's contents are
:meth:`Trainer.state_dict`, its files and resume checks :mod:`hpcm.train.state`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hpcm.codec.checkpoint import model_checkpoint
from hpcm.optim.balancer import Balancer
from hpcm.optim.grad_diagnostics import NAMES as GRAD_DIAGNOSTICS
from hpcm.optim.grad_diagnostics import gradient_diagnostics
from hpcm.run_layout import LAST_CHECKPOINT
from hpcm.train import state
from hpcm.train.data import DataLoaders
from hpcm.train.distributed import (
    DistContext,
    full_state,
    is_sharded,
    load_full_state,
    wrap_ddp,
)
from hpcm.train.interrupt import StopRequest
from hpcm.train.losses import RateDistortionLoss, effective_lambda
from hpcm.train.lr_schedule import LRSchedule
from hpcm.train.post_step import BatchProbe, rng_state, set_rng_state
from hpcm.train.speed import SpeedOptions
from hpcm.train.tracking import MetricWindow, Tracker
from hpcm.train.validate import validate

log = logging.getLogger(__name__)

# Per-step values averaged over a logging window; each is logged as train/<name>.
STEP_METRICS = ("loss", "distortion", "bpp_loss", "psnr")
# Also per step: the gradient norm before the clip, and the trade-off the step trained at.
STEP_EXTRAS = ("grad_norm", "effective_lambda")
# Skipped batches are announced one by one up to this count, then every SKIP_REPORT_EVERY-th.
SKIP_WARNINGS, SKIP_REPORT_EVERY = 10, 100


@dataclass
class Progress:
    next_epoch: int = 0
    global_step: int = 0
    best_loss: float = math.inf
    skipped_batches: int = 0
    epoch_batches: int = 0  # batches of epoch next_epoch done (a checkpoint written mid-epoch)


class Trainer:
    """Trains ``model`` on ``loaders`` as configured by ``cfg`` (the composed ``conf/train.yaml``).

    Build one with :func:`hpcm.train.build.build_trainer`; :meth:`train_step` runs one batch,
    :meth:`fit` the whole run, :meth:`resume` restores a checkpoint first.

    ``model`` stays the bare model (checkpoints, validation, the balancer's probe);
    ``train_model`` runs the training forward (DDP wrapper, torch.compile), ``plain_forward``
    the no-grad re-evaluations (compiled, never the DDP wrapper).
    """

    def __init__(
        self,
        cfg: DictConfig,
        model: nn.Module,
        criterion: RateDistortionLoss,
        optimizer: torch.optim.Optimizer,
        balancer: Balancer,
        loaders: DataLoaders,
        device: torch.device,
        run_dir: Path,
        speed: SpeedOptions,
        dist: DistContext,
    ) -> None:
        self.cfg, self.model, self.criterion = cfg, model, criterion
        self.optimizer, self.balancer, self.loaders = optimizer, balancer, loaders
        self.device, self.run_dir, self.speed, self.dist = device, Path(run_dir), speed, dist
        t = cfg.trainer
        self.epochs = int(t.epochs)
        self.schedule = LRSchedule.from_config(t.lr_schedule, self.epochs)
        self.base_lr = float(cfg.optimizer.lr)
        clip = cfg.optimizer.clip_max_norm
        self.clip_max_norm = float(clip) if clip else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.tasks = balancer.task_names
        self.metric_names = STEP_METRICS + (("ms_ssim",) if criterion.metric == "ms-ssim" else ())
        self.window = MetricWindow((*self.metric_names, *STEP_EXTRAS))
        self.progress = Progress()
        self.stop = StopRequest()  # fit() installs its handlers, unless they already are
        self.tracker: Tracker | None = None
        self.last_test: dict[str, float] = {}
        self.resume_rng: dict[str, Tensor | None] | None = None
        self.resume_run_id: str | None = None
        self.grad_diagnostics_every = int(t.get("grad_diagnostics_every") or 0)
        if self.grad_diagnostics_every and dist.enabled:
            log.warning("trainer.grad_diagnostics_every is single-process only: not logged")
            self.grad_diagnostics_every = 0
        self.grad_diagnostics: Tensor | None = None  # the latest, logged with the next window
        self.plain_forward = speed.compiled(model)
        wrapped = wrap_ddp(model, dist, device)
        self.train_model = self.plain_forward if wrapped is model else speed.compiled(wrapped)

    def _forward(self, module: Any, x: Tensor) -> dict[str, Any]:
        with self.speed.autocast(self.device):
            output = module(x)
        return self.speed.float_output(output)

    # ------------------------------------------------------------------------- one step
    def train_step(self, x: Tensor) -> Tensor | None:
        """One optimizer step on batch ``x``; returns the detached values of ``metric_names``
        and ``STEP_EXTRAS``, or None when the batch was skipped as non-finite. Sets
        ``stop.stopping`` when a signal asks to stop after this step (skipped or not)."""
        x = self.speed.batch(x, self.device)
        self.model.prepare(x.shape, x.device)  # eagerly: a compiled forward only looks it up
        noise = rng_state(self.device)  # the probe replays the step's noise
        output = self._forward(self.train_model, x)
        losses = self.criterion(output, x)
        task_losses = self.criterion.task_losses(losses, output, self.tasks)
        every = self.grad_diagnostics_every
        if every and (self.progress.global_step + 1) % every == 0:
            self.grad_diagnostics = gradient_diagnostics(task_losses, self.params)
        self.optimizer.zero_grad(set_to_none=True)
        objective = self.balancer.backward(task_losses, self.params)
        if self.clip_max_norm is not None:  # the only clip, the same for every optimizer
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_max_norm)
        else:
            norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.params if p.grad is not None]
            )
        if isinstance(norm, DTensor):  # FSDP: the norm over all shards
            norm = norm.full_tensor()
        finite = torch.isfinite(objective) & torch.isfinite(losses["loss"]) & torch.isfinite(norm)
        # The one per-step sync: all DDP ranks agree on the skip and the stop in one collective.
        finite_everywhere, go_on = self.dist.all_true([finite, self.stop.go_on()], self.device)
        self.stop.settle(go_on)
        if not finite_everywhere:
            self.optimizer.zero_grad(set_to_none=True)
            self._report_skip()
            return None
        self.optimizer.step()
        self.balancer.after_step(
            BatchProbe(
                self.model,
                lambda batch: self._forward(self.plain_forward, batch),
                self.criterion,
                self.tasks,
                x,
                output,
                noise,
                self.device,
                fresh_seed=self._fresh_seed(),
            )
        )
        values = [losses[name].detach() for name in self.metric_names]
        trade_off = effective_lambda(
            self.criterion.lmbda, self.balancer.applied_weights, task_losses
        )
        extras = [norm.detach(), trade_off.detach()]
        return torch.stack([*values, *(v.to(values[0].dtype) for v in extras)])

    def _fresh_seed(self) -> int:
        """Seed of a post-step re-evaluation's fresh noise: a function of the run's seed, the
        step and the rank (resumable, independent of the training noise stream)."""
        seed = int(self.cfg.get("seed") or 0)
        return (seed * 1_000_003 + self.progress.global_step) * 64 + self.dist.rank

    def _report_skip(self) -> None:
        self.progress.skipped_batches += 1
        count = self.progress.skipped_batches
        if count <= SKIP_WARNINGS or count % SKIP_REPORT_EVERY == 0:
            log.warning(
                "skipped batch at step %d: non-finite loss or gradient norm (%d skipped so far; "
                "if this repeats, lower optimizer.clip_max_norm or optimizer.lr, or raise "
                "optimizer.balancer.gamma)",
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

    def train_epoch(self, epoch: int, bar: tqdm | None = None) -> bool:
        """Train ``epoch`` from its batch ``progress.epoch_batches`` (a run resumed mid-epoch
        skips the keys of the batches it did). Returns False when a step agreed to stop
        (``stop.stopping``, a signal): the epoch stops after that step."""
        self.model.train()
        self.set_epoch_lr(epoch)
        done = self.progress.epoch_batches
        self.loaders.train.sampler.set_epoch(epoch, skip=done * self.loaders.train.batch_size)
        steps, log_every = self.steps_per_epoch(), int(self.cfg.trainer.log_every_n_steps)
        for i, x in enumerate(self.loaders.train, start=done):
            if i >= steps:
                break
            values = self.train_step(x)
            if values is None:
                self.window.skip()
            else:
                self.window.add(values)
            self.progress.global_step += 1
            if self.progress.global_step % log_every == 0:
                self._log_window(epoch, bar)
            if bar is not None:
                bar.update(1)
            self.progress.epoch_batches = i + 1
            if self.stop.stopping:
                return False
        self._log_window(epoch, bar)
        self.progress.epoch_batches = 0
        return True

    def _log_window(self, epoch: int, bar: tqdm | None) -> None:
        if not self.window.batches:
            return
        record = self.window.flush(self.dist.all_reduce_mean)  # DDP: the ranks' mean
        record["train/lr"] = self.optimizer.param_groups[0]["lr"]
        record["train/skipped_batches"] = float(self.progress.skipped_batches)
        record.update({f"train/{k}": v for k, v in self.balancer.report().items()})
        if self.grad_diagnostics is not None:
            values = self.grad_diagnostics.tolist()
            record.update({f"train/{k}": v for k, v in zip(GRAD_DIAGNOSTICS, values, strict=True)})
            self.grad_diagnostics = None
        if self.tracker is not None:
            self.tracker.log(record, self.progress.global_step, epoch)
        if bar is not None and "train/loss" in record:
            bar.set_postfix(
                epoch=epoch,
                loss=f"{record['train/loss']:.4g}",
                bpp=f"{record['train/bpp_loss']:.4g}",
                psnr=f"{record['train/psnr']:.2f}",
            )

    def validate(self) -> dict[str, float]:
        return validate(
            self.model,
            self.criterion,
            self.loaders.test,
            self.metric_names,
            self.dist,
            self.device,
            lockstep=is_sharded(self.model),
        )

    # ------------------------------------------------------------------------- the run
    def fit(self) -> float:
        """Train from ``progress.next_epoch`` to ``trainer.epochs``; returns the best test loss
        (NaN when no validation gave a finite loss, e.g. a diverged run)."""
        t = self.cfg.trainer
        val_every, save_every = int(t.val_every_n_epochs), int(t.save_every_n_epochs)
        if self.resume_rng is not None:  # last, so that nothing built after it draws from it
            set_rng_state(self.resume_rng, self.device)
            self.resume_rng = None
        start = self.progress.next_epoch
        if start >= self.epochs:
            log.info("nothing to train: all %d epochs are done (raise trainer.epochs)", self.epochs)
        steps = self.steps_per_epoch()
        stop = self.stop  # read by every step
        log.info(
            "learning rate %s (optimizer.lr x trainer.lr_schedule)",
            self.schedule.describe(self.base_lr, self.epochs),
        )
        bar = tqdm(
            total=self.epochs * steps,
            initial=start * steps + self.progress.epoch_batches,
            disable=not t.progress_bar or not self.dist.is_main,
            desc="train",
            dynamic_ncols=True,
        )
        with logging_redirect_tqdm(), bar, stop.installed():  # log lines above the bar
            for epoch in range(start, self.epochs):
                if not self.train_epoch(epoch, bar):
                    self.save(epoch - 1, is_best=False, periodic=False)  # mid-epoch state
                    raise stop.interrupted(self.progress, epoch, self.run_dir / LAST_CHECKPOINT)
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
                # Also after the last epoch: a signal during its validation or save ends the
                # run saved but unfinished; the same command then does the end-of-run steps.
                if stop.agreed(self.dist, self.device):
                    raise stop.interrupted(self.progress, epoch + 1, self.run_dir / LAST_CHECKPOINT)
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

    # ------------------------------------------------------------------------- state
    def state_dict(self, epoch: int) -> dict[str, Any]:
        """The training checkpoint after ``epoch`` (and ``progress.epoch_batches`` batches of the
        next one, for a checkpoint written mid-epoch on a signal): a project checkpoint of the
        model plus everything a bit-exact resume needs. FSDP gathers the whole state on rank 0
        (a collective: every rank calls this)."""
        progress = self.progress
        ckpt = model_checkpoint(self.model)
        if is_sharded(self.model):
            ckpt["state_dict"], optimizer = full_state(self.model, self.optimizer)
            ckpt["fsdp"] = True  # the optimizer state is keyed by parameter name
        else:
            optimizer = self.optimizer.state_dict()
        ckpt.update(
            epoch=epoch,
            global_step=progress.global_step,
            best_loss=progress.best_loss,
            skipped_batches=progress.skipped_batches,
            epoch_batches=progress.epoch_batches,
            window=self.window.state_dict(),
            optimizer=optimizer,
            balanced=self.balancer.state_dict(),
            lr=self.optimizer.param_groups[0]["lr"],
            test=dict(self.last_test),
            config=OmegaConf.to_container(self.cfg, resolve=True),
            rng=rng_state(self.device),
            wandb_run_id=None if self.tracker is None else self.tracker.run_id,
        )
        return ckpt

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore model, optimizer, balancer, counters, the open logging window and (at the
        start of :meth:`fit`) the RNG from a checkpoint of :meth:`state_dict`, as checked by
        :func:`hpcm.train.state.read_resumable`."""
        if is_sharded(self.model):  # FSDP: each rank takes its shards of the whole state
            load_full_state(self.model, self.optimizer, ckpt["state_dict"], ckpt["optimizer"])
        else:
            self.model.load_state_dict(ckpt["state_dict"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.balancer.load_state_dict(ckpt["balanced"])
        self.progress = Progress(
            next_epoch=int(ckpt["epoch"]) + 1,
            global_step=int(ckpt["global_step"]),
            best_loss=float(ckpt["best_loss"]),
            skipped_batches=int(ckpt["skipped_batches"]),
            epoch_batches=int(ckpt.get("epoch_batches", 0)),
        )
        self.last_test = dict(ckpt.get("test") or {})
        self.resume_rng = self._rank_rng(ckpt)
        self.resume_run_id = ckpt.get("wandb_run_id")
        windows = ckpt.get("window_ranks") or [ckpt.get("window")]
        if windows[0] is not None:  # this rank's open logging window, on its device
            dist = self.dist
            window = dict(windows[dist.rank] if len(windows) == dist.world_size else windows[0])
            if window["sums"] is not None:
                window["sums"] = window["sums"].to(self.device)
            self.window.load_state_dict(window)

    def _rank_rng(self, ckpt: dict[str, Any]) -> dict[str, Any] | None:
        """This rank's noise stream of a checkpoint (None: start fresh, distinct streams)."""
        dist = self.dist
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
        torch.manual_seed(dist.noise_seed(int(self.cfg.seed) + self.progress.global_step))
        return None

    def save(self, epoch: int, is_best: bool, periodic: bool) -> None:
        """Write the checkpoints of ``epoch`` (:func:`hpcm.train.state.write`). Under DDP every
        rank calls this (it gathers the ranks' noise streams and open logging windows, in one
        collective) and rank 0 alone writes."""
        ckpt = self.state_dict(epoch)
        if self.dist.enabled:
            ranks = self.dist.gather_objects((ckpt["rng"], ckpt["window"]))
            ckpt["rng_ranks"] = [rng for rng, _ in ranks]
            ckpt["window_ranks"] = [window for _, window in ranks]
            if not self.dist.is_main:
                return
        state.write(ckpt, self.run_dir, epoch, is_best, periodic, self.cfg.optimizer)

    def resume(self, path: str | Path) -> None:
        """Continue from the training checkpoint at ``path`` (refused in one line when it does
        not fit this run: :func:`hpcm.train.state.read_resumable`)."""
        ckpt = state.read_resumable(path, self.model, is_sharded(self.model), self.cfg)
        self.load_state_dict(ckpt)
        batches = self.progress.epoch_batches
        mid = f", {batches} batches of epoch {int(ckpt['epoch']) + 1}" if batches else ""
        log.info("resumed from %s (epoch %d done%s)", path, int(ckpt["epoch"]), mid)

    def start_tracking(self, resumed: bool = False) -> None:
        step = self.progress.global_step if resumed else None
        self.tracker = Tracker.for_run(self.cfg, self.run_dir, step, self.resume_run_id)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
