"""The training suite: config composition, the training step of both optimizers, skipping of
non-finite batches, resume equality, outputs, logging and one-line errors."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, get_method, instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue
from PIL import Image

import hpcm
from hpcm.codec.checkpoint import CheckpointError, safe_torch_load
from hpcm.codec.state_dict import LEGACY_TABLE_KEYS
from hpcm.configs import CONF_DIR
from hpcm.eval.showcase import show_run
from hpcm.run_layout import read_metrics
from hpcm.train import loop as engine
from hpcm.train.build import (
    ConfigError,
    build_balancer,
    build_optimizer,
    build_trainer,
    check_config,
    train,
)
from hpcm.train.cli import prepare_overrides
from hpcm.train.data import DataError, DataWarning, to_float
from hpcm.train.losses import task_names
from hpcm.train.lr_schedule import LRSchedule
from hpcm.train.post_step import replay_rng, rng_state
from hpcm.train.tracking import no_logger, start_wandb

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("model", "optimizer", "lambda", "data", "logger", "trainer", "experiment")
# Extra overrides an option needs to resolve (mandatory paths).
FOLDERS = ["data.train_dir=/tmp/train", "data.test_dir=/tmp/test"]
NEEDS = {
    ("data", "folder"): FOLDERS,
    ("data", "flickr2w"): ["data.root=/tmp/flickr"],
    ("experiment", "compare"): ["data=folder", *FOLDERS],
    ("experiment", "compare_cpu"): FOLDERS,
    ("experiment", "factorial"): ["data=folder", *FOLDERS],
    ("experiment", "factorial_cpu"): FOLDERS,
    ("experiment", "factorial_lr"): ["data=folder", *FOLDERS],
    ("experiment", "factorial_lr_cpu"): FOLDERS,
    ("experiment", "qp_finetune_cpu"): FOLDERS,
    # the study names the logger's group after itself (hydra's), which plain composition lacks
    ("experiment", "balanced_bdrate_cpu"): [*FOLDERS, "logger.group=study"],
    # a replay twin names its source in the sweep directory (hydra's), which plain composition
    # does not have: give the source
    ("optimizer", "replay_balanced"): ["optimizer.balancer.source=/tmp/source"],
    ("optimizer", "replay_famo_adam"): ["optimizer.balancer.source=/tmp/source"],
}
# The classes an optimizer option builds (base optimizer, balancer) and its task losses.
OPTIMIZERS = {
    "adam": ("torch.optim.Adam", "hpcm.optim.balancer.PlainBalancer", "rd"),
    "balanced": ("hpcm.optim.CautiousAdam", "hpcm.optim.balancer.FAMOBalancer", "rd"),
    "balanced_hier": ("hpcm.optim.CautiousAdam", "hpcm.optim.balancer.FAMOBalancer", "scales"),
    "balanced_qp": ("hpcm.optim.CautiousAdam", "hpcm.optim.balancer.QPBalancer", "rd"),
    "lambda_replay": ("torch.optim.Adam", "hpcm.optim.lambda_replay.LambdaReplayBalancer", "rd"),
    "adam_cautious": ("hpcm.optim.CautiousAdam", "hpcm.optim.balancer.PlainBalancer", "rd"),
    "famo_adam": ("torch.optim.Adam", "hpcm.optim.balancer.FAMOBalancer", "rd"),
    "replay_balanced": (
        "hpcm.optim.CautiousAdam",
        "hpcm.optim.lambda_replay.LambdaReplayBalancer",
        "rd",
    ),
    "replay_famo_adam": ("torch.optim.Adam", "hpcm.optim.lambda_replay.LambdaReplayBalancer", "rd"),
}
# The loader function of a data option and its (root, train_dir, test_dir) under NEEDS.
DATA = {
    "embedded": ("hpcm.train.data.embedded_loaders", [None, None, None]),
    "folder": ("hpcm.train.data.folder_loaders", [None, "/tmp/train", "/tmp/test"]),
    "flickr2w": ("hpcm.train.data.folder_loaders", ["/tmp/flickr", "train", "test"]),
}
LOGGERS = {"none": no_logger, "wandb": start_wandb}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _check_factorial_preset(option: str, cfg) -> None:
    """What experiment=factorial, its lr search and their CPU sizes resolve to for every arm: the
    arm's grid and lr (a replay twin's are its source's), the readings, the search's target."""
    lambdas, lrs = cfg.factorial.lambdas, cfg.factorial.lr
    overrides = prepare_overrides([f"experiment={option}", *NEEDS[("experiment", option)]])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        full = compose("train", overrides=overrides, return_hydra_config=True)
        params = full.hydra.sweeper.params
        arms = params.optimizer.split(",")
        for arm in arms:
            point = prepare_overrides(["point=1"])  # as typed: an int, quoted for OmegaConf
            run = compose("train", overrides=[*overrides, f"optimizer={arm}", *point])
            grid = lambdas.famo if "famo" in arm or "balanced" in arm else lambdas.fixed
            if "lr" not in option:
                assert run.lmbda == grid[1]
                assert run.optimizer.lr == lrs[arm.removeprefix("replay_")]
        if "lr" not in option:
            # the held-out arm of the gamma/w_lr search: balanced's grid and lr, its own name
            tuned = ["optimizer=balanced", "optimizer.name=balanced_tuned", "point='1'"]
            run = compose("train", overrides=[*overrides, *tuned])
            assert (run.lmbda, run.optimizer.lr) == (lambdas.famo[1], lrs.balanced)
    assert full.resume == "auto" and str(full.hydra.mode) == "RunMode.MULTIRUN"
    if option.endswith("_cpu"):
        assert (full.model.name, full.trainer.num_threads, full.hydra.launcher.n_jobs) == (
            "tiny",
            1,
            2,
        )
        assert full.trainer.max_steps_per_epoch * full.trainer.epochs == 600
    if "lr" in option:
        assert arms == ["adam", "adam_cautious", "famo_adam", "balanced"]
        searched = [float(v) for v in params["optimizer.lr"].split(",")]
        assert len(searched) == 3 and float(lrs.adam) in searched
        assert "compare" not in full.hydra.callbacks
        assert full.hydra.callbacks.lr_search._target_ == "hpcm.eval.lr_search.LrSearchReport"
        assert cfg.lr_search.target_lambda == lambdas.fixed[2] and cfg.seed == 100
    else:
        assert arms.index("replay_balanced") > arms.index("balanced")  # sources first
        assert arms.index("replay_famo_adam") > arms.index("famo_adam")
        assert params.seed == "0,1,2,3" and params.point == "'0','1','2','3'"
        assert [list(p) for p in full.compare.pairs] == [
            ["adam_cautious", "adam"],
            ["famo_adam", "adam"],
            ["balanced", "adam_cautious"],
            ["famo_adam", "replay_famo_adam"],
            ["balanced", "replay_balanced"],
        ]


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS for o in options(g)], ids=lambda v: str(v)
)
def test_every_config_option_composes(make_cfg, tmp_path: Path, group: str, option: str) -> None:
    cfg = make_cfg(tmp_path, f"{group}={option}", *NEEDS.get((group, option), []), short=False)
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert plain["paths"]["run_dir"] == str(tmp_path)
    if group == "model":
        assert get_method(cfg.model._target_) is hpcm.build_model
        with torch.device("meta"):  # shapes only: no memory for HPCM-1B's weights
            model = instantiate(cfg.model)
        assert model.name == option and model.config == hpcm.MODEL_CONFIGS[option]
    elif group == "optimizer":
        base, balancer_target, tasks = OPTIMIZERS[option]
        assert (cfg.optimizer.base._target_, cfg.optimizer.balancer._target_) == (
            base,
            balancer_target,
        )
        model = torch.nn.Linear(2, 2)
        optimizer = build_optimizer(cfg.optimizer, model.parameters())
        if "replay" in option:  # it replays a run's logged trade-off: give it one
            (tmp_path / "metrics.jsonl").write_text(
                '{"step": 10, "train/effective_lambda": 0.01}\n'
            )
            cfg.optimizer.balancer.source = str(tmp_path / "metrics.jsonl")
        balancer = build_balancer(cfg.optimizer)
        assert type(optimizer) is get_class(base) and type(balancer) is get_class(balancer_target)
        assert balancer.task_names == task_names(tasks)
        assert optimizer.defaults["lr"] == cfg.optimizer.lr == 2e-3  # optimizer.lr is the lr
        assert cfg.optimizer.clip_max_norm == 1.0
    elif group == "lambda":
        value = float(option.removeprefix("msssim_"))
        assert cfg.lmbda == value
        assert cfg.metric == ("ms-ssim" if option.startswith("msssim_") else "mse")
    elif group == "data":
        target, folders = DATA[option]
        assert cfg.data._target_ == target and callable(get_method(target))
        assert [plain["data"].get(k) for k in ("root", "train_dir", "test_dir")] == folders
        if option == "flickr2w":  # the root is mandatory
            with pytest.raises(MissingMandatoryValue):
                OmegaConf.to_container(
                    make_cfg(tmp_path, "data=flickr2w", short=False).data, throw_on_missing=True
                )
    elif group == "logger":
        start = instantiate(cfg.logger)  # a partial: the run adds its directory and name
        assert start.func is get_method(cfg.logger._target_) is LOGGERS[option]
    elif group == "experiment" and option.startswith("factorial"):
        _check_factorial_preset(option, cfg)
    elif group == "experiment" and option == "qp_finetune_cpu":
        # each lambda's own adam model of the factorial, fine-tuned at the paper's small lr
        assert cfg.init_from == f"multirun/factorial_tiny_mse/adam_{cfg.lmbda}_seed0/last.pth.tar"
        assert cfg.lmbda == cfg.factorial.lambdas.fixed[0] and cfg.optimizer.lr == 5e-5
        assert [list(p) for p in cfg.compare.pairs] == [["balanced_qp", "adam_cautious"]]
    elif group == "experiment" and option.startswith("compare"):
        assert cfg.resume == "auto" and cfg.compare.dataset == "/tmp/test"
        overrides = prepare_overrides([f"experiment={option}", *NEEDS[(group, option)]])
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            full = compose("train", overrides=overrides, return_hydra_config=True)
        assert full.hydra.callbacks.compare._target_ == "hpcm.eval.compare.CompareReport"
        params = full.hydra.sweeper.params
        assert set(params.optimizer.split(",")) == {"adam", "balanced", "balanced_qp"}
        assert len(params.seed.split(",")) == 3 and len(str(params.lmbda).split(",")) == 4
    elif group == "experiment" and option == "balanced_bdrate_cpu":
        # the study in the factorial's regime (tests/test_curve_search.py: its curves), two
        # single-thread trials at a time
        overrides = prepare_overrides([f"experiment={option}", *NEEDS[(group, option)]])
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            full = compose("train", overrides=overrides, return_hydra_config=True)
        sweeper, launcher = full.hydra.sweeper, full.hydra.launcher
        assert (sweeper.study_name, sweeper.n_jobs, sweeper.n_trials) == (
            "balanced_bdrate_cpu",
            2,
            12,
        )
        assert (launcher.n_jobs, cfg.trainer.num_threads) == (2, 1)
    elif group == "experiment":
        assert cfg.optimizer.lr < 1e-4 and cfg.trainer.epochs < 3001
    else:
        expected = {"default": (False, False, 30), "ddp": (True, False, 30)}
        expected |= {"fsdp": (True, True, 30), "hpcm": (False, False, 3001)}
        t = cfg.trainer
        assert (t.ddp, t.fsdp, t.epochs) == expected[option]
        schedule = LRSchedule.from_config(cfg.trainer.lr_schedule, cfg.trainer.epochs)
        assert schedule.factor(0) == 1.0  # the run starts at optimizer.lr
        assert schedule.factor(cfg.trainer.epochs - 1) < schedule.factor(0)  # it decays


def test_defaults_are_the_documented_ones(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, short=False)
    assert (cfg.model.name, cfg.optimizer.name) == ("tiny", "adam")
    assert cfg.data._target_ == DATA["embedded"][0]
    assert (cfg.lmbda, cfg.metric, cfg.logger._target_, cfg.logger.mode) == (
        0.013,
        "mse",
        "hpcm.train.tracking.start_wandb",
        "offline",
    )
    assert cfg.trainer.save_every_n_epochs == 500 and cfg.resume is None
    balanced = make_cfg(tmp_path, "optimizer=balanced", short=False).optimizer
    famo = balanced.balancer
    assert (famo.gamma, famo.w_lr, balanced.clip_max_norm) == (0.003, 0.025, 1.0)
    assert list(famo.min_losses) == [-1.0, -1.0]
    qp = make_cfg(tmp_path, "optimizer=balanced_qp", short=False).optimizer.balancer
    assert set(qp) == {"_target_", "min_losses", "warn_weight_above", "constraint"}  # no FAMO keys


def test_prepare_overrides_quotes_lambdas_and_rejects_unknown_names() -> None:
    prepare = prepare_overrides
    assert prepare(["lambda=0.013", "optimizer=balanced"]) == [
        "lambda='0.013'",
        "optimizer='balanced'",
    ]
    assert prepare(["lambda=0.0130"]) == ["lambda='0.013'"]
    assert prepare(["lambda=0.0018,0.0483"]) == ["lambda='0.0018','0.0483'"]
    assert prepare(["point=1"]) == ["point='1'"]  # the factorial's index into a lambda grid
    assert prepare(["point=0,3"]) == ["point='0','3'"]
    passed = ["-m", "trainer.epochs=3", "hydra/launcher=basic", "lmbda=0.02", "+model.M=64"]
    assert prepare(passed) == passed
    with pytest.raises(ConfigError, match="unknown model 'foo'; choose from hpcm_1b, hpcm_base, "):
        prepare(["model=foo"])
    with pytest.raises(ConfigError, match="unknown lambda '0.02'.*lmbda=0.02"):
        prepare(["lambda=0.02"])
    with pytest.raises(ConfigError, match="unknown optimizer 'sgd'"):
        prepare(["optimizer=sgd"])


def test_lr_schedule_follows_the_official_milestones_scaled_to_the_run(make_cfg) -> None:
    cfg = make_cfg(None, "trainer=hpcm", short=False).trainer.lr_schedule
    official = LRSchedule.from_config(cfg, 3001)
    assert official.milestones == (2750, 2850, 2950)
    factors = [official.factor(e) for e in (0, 2749, 2750, 2849, 2850, 2950, 3000)]
    assert factors == [1.0, 1.0, 0.3, 0.3, 0.1, 0.01, 0.01]
    assert LRSchedule.from_config(cfg, 300).milestones == (275, 285, 295)
    fixed = LRSchedule.from_config({**OmegaConf.to_container(cfg), "scale_to_run": False}, 10)
    assert fixed.milestones == (2750, 2850, 2950)


def test_the_default_run_starts_at_optimizer_lr_then_decays_as_the_official_one(make_cfg) -> None:
    cfg = make_cfg(None, short=False)
    schedule = LRSchedule.from_config(cfg.trainer.lr_schedule, cfg.trainer.epochs)
    lr = float(cfg.optimizer.lr)
    assert lr == 2e-3
    assert [round(lr * schedule.factor(e), 8) for e in (0, 26, 27, 28, 29)] == [
        2e-3,
        2e-3,
        6e-4,
        2e-4,
        2e-5,
    ]
    assert schedule.describe(lr, cfg.trainer.epochs) == (
        "0.002 from epoch 0, 0.0006 from epoch 27, 0.0002 from epoch 28, 2e-05 from epoch 29"
    )
    assert LRSchedule((5,), (0.1,)).describe(1e-4, 5) == "0.0001 from epoch 0"  # 5 is never reached


OFFICIAL_RATES = [(1e-4, 0), (3e-5, 2750), (1e-5, 2850), (1e-6, 2950)]  # trainer=hpcm
DEFAULT_RATES = [(2e-3, 0), (6e-4, 27), (2e-4, 28), (2e-5, 29)]  # the default trainer's 30 epochs


@pytest.mark.parametrize(
    ("overrides", "rates"),
    [
        (["trainer=hpcm"], OFFICIAL_RATES),
        (["trainer=hpcm", "optimizer=balanced"], OFFICIAL_RATES),
        (["trainer=ddp", "optimizer=balanced_qp"], DEFAULT_RATES),
        (["trainer=fsdp"], DEFAULT_RATES),
        (["trainer=hpcm", "experiment=finetune"], [(5e-5, 0), (5e-6, 40)]),
        (["experiment=compare_cpu", *FOLDERS], [(5e-4, 0), (5e-5, 4)]),
        (
            ["trainer=hpcm", "optimizer.lr=3e-4"],
            [(3e-4, 0), (9e-5, 2750), (3e-5, 2850), (3e-6, 2950)],
        ),
    ],
)
def test_every_preset_starts_at_optimizer_lr(make_cfg, overrides: list[str], rates: list) -> None:
    """The learning rates each preset trains with, from which epoch on: the first is always
    optimizer.lr, from epoch 0."""
    cfg = make_cfg(None, *overrides, short=False)
    schedule = LRSchedule.from_config(cfg.trainer.lr_schedule, cfg.trainer.epochs)
    lr = float(cfg.optimizer.lr)
    starts = (0, *(m for m in schedule.milestones if m < cfg.trainer.epochs))
    assert [(round(lr * schedule.factor(e), 12), e) for e in starts] == rates
    assert rates[0] == (lr, 0)


# ----------------------------------------------------------------------------- the step
def fixed_batch(trainer: engine.Trainer) -> torch.Tensor:
    return to_float(next(iter(trainer.loaders.train)))  # the loader gives uint8


def eval_loss(trainer: engine.Trainer, x: torch.Tensor) -> float:
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.criterion(trainer.model(x), x)["loss"].item()
    trainer.model.train()
    return loss


@pytest.mark.parametrize("optimizer", ["adam", "balanced", "balanced_hier", "balanced_qp"])
def test_loss_falls_on_a_fixed_batch(make_cfg, tmp_path: Path, optimizer: str) -> None:
    trainer = build_trainer(make_cfg(tmp_path, f"optimizer={optimizer}"))
    x = fixed_batch(trainer)
    before = eval_loss(trainer, x)
    for _ in range(4):
        assert trainer.train_step(x) is not None
    assert eval_loss(trainer, x) < before
    if optimizer != "adam":
        weights = trainer.balancer.weights
        n = len(trainer.tasks)
        assert weights.shape == (n,) and n == (5 if optimizer == "balanced_hier" else 2)
        assert torch.isclose(weights.sum(), torch.tensor(1.0))
        assert not torch.allclose(weights, torch.full((n,), 1 / n))  # the weights did move


def test_replayed_rng_gives_the_same_noise_and_leaves_the_stream_alone() -> None:
    device = torch.device("cpu")
    torch.manual_seed(1)
    state = rng_state(device)
    first = torch.rand(5)
    with replay_rng(state, device):
        again = torch.rand(5)
    following = torch.rand(5)
    torch.manual_seed(1)
    expected = torch.rand(10)
    assert torch.equal(again, first)
    assert torch.equal(torch.cat([first, following]), expected)


def test_post_step_losses_use_the_same_noise(make_cfg, tmp_path: Path) -> None:
    # With lr 0 the weights do not move, so with the step's own noise the post-step losses
    # equal the pre-step ones: delta = 0 and the logits (starting at 0) stay exactly 0.
    replay = "optimizer.balancer.post_step_noise=replay"
    trainer = build_trainer(make_cfg(tmp_path, "optimizer=balanced", "optimizer.lr=0.0", replay))
    x = fixed_batch(trainer)
    for _ in range(2):
        assert trainer.train_step(x) is not None
    state = trainer.balancer.state_dict()
    assert torch.equal(state["logits"], torch.zeros(2))
    assert state["step"].item() == 2


def test_a_non_finite_batch_is_skipped(make_cfg, tmp_path: Path) -> None:
    trainer = build_trainer(make_cfg(tmp_path, "optimizer=balanced"))
    x = fixed_batch(trainer)
    assert trainer.train_step(x) is not None  # moments and task weights are non-trivial now
    params = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in trainer.optimizer.state.values()]
    famo = trainer.balancer.state_dict()

    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    assert trainer.train_step(bad) is None
    assert trainer.progress.skipped_batches == 1
    assert all(torch.equal(v, params[k]) for k, v in trainer.model.state_dict().items())
    assert all(
        torch.equal(s["exp_avg"], m)
        for s, m in zip(trainer.optimizer.state.values(), moments, strict=True)
    )
    after = trainer.balancer.state_dict()
    for key in ("logits", "exp_avg", "exp_avg_sq", "step", "skipped_updates"):
        assert torch.equal(after[key], famo[key]), key
    assert all(p.grad is None for p in trainer.model.parameters())
    assert trainer.train_step(x) is not None  # training goes on


def test_a_skipped_batch_is_counted_and_logged(make_cfg, tmp_path: Path) -> None:
    trainer = build_trainer(make_cfg(tmp_path, "trainer.log_every_n_steps=1"))
    forward, calls = trainer.model.forward, []

    def first_output_nan(x: torch.Tensor) -> dict:
        out = forward(x)
        calls.append(1)
        if len(calls) == 1:
            out["x_hat"] = out["x_hat"] * float("nan")
        return out

    trainer.model.forward = first_output_nan
    trainer.start_tracking()
    try:
        assert math.isfinite(trainer.fit())
    finally:
        trainer.close()
    train_records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "train/lr" in r]
    assert [r["train/skipped_batches"] for r in train_records] == [1.0, 1.0]
    assert "train/loss" not in train_records[0] and math.isfinite(train_records[1]["train/loss"])


# ----------------------------------------------------------------------------- whole runs
def test_default_run_shortened(make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # `python train.py` with no arguments, cut to one step; wandb runs offline into the run dir.
    cfg = make_cfg(
        tmp_path,
        "trainer.max_steps_per_epoch=1",
        "trainer.epochs=1",
        "data.test_crop_size=256",
        short=False,
    )
    assert cfg.logger._target_ == "hpcm.train.tracking.start_wandb"
    with caplog.at_level(logging.INFO):
        loss = train(cfg, show=show_run)  # as the command runs it
    # The start-of-run line names the learning rates; the first is optimizer.lr.
    assert "learning rate 0.002 from epoch 0 (optimizer.lr x trainer.lr_schedule)" in caplog.text
    files = {p.name for p in tmp_path.iterdir()}
    assert {"epoch_best.pth.tar", "epoch_0.pth.tar", "last.pth.tar", "config.yaml"} <= files
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    # The run ends with a picture and an R-D plot against JPEG (trainer.showcase).
    for name in ("showcase.png", "rd_vs_jpeg.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = read_metrics(tmp_path / "metrics.jsonl")
    train_keys = {"train/loss", "train/distortion", "train/bpp_loss", "train/psnr"}
    test_keys = {"test/loss", "test/distortion", "test/bpp_loss", "test/psnr"}
    assert train_keys <= set(records[0]) and test_keys <= set(records[-1])
    assert records[0]["train/lr"] == cfg.optimizer.lr == 2e-3
    assert loss == pytest.approx(records[-1]["test/loss"]) and math.isfinite(loss)
    resolved = OmegaConf.load(tmp_path / "config.yaml")
    assert resolved.paths.run_dir == str(tmp_path) and resolved.lmbda == 0.013
    model = hpcm.load_model(tmp_path / "epoch_best.pth.tar")  # weights_only, as evaluate.py
    assert model.name == "tiny"


def interrupt_after(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    step = engine.Trainer.train_step
    calls = []

    def counting_step(self, x):
        if len(calls) == steps:
            raise KeyboardInterrupt
        calls.append(1)
        return step(self, x)

    monkeypatch.setattr(engine.Trainer, "train_step", counting_step)


def test_resume_gives_bit_identical_weights(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["optimizer=balanced", "trainer.epochs=2", "trainer.log_every_n_steps=1"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(make_cfg(full, *common))

    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)  # in the middle of epoch 1, after one logged step
        with pytest.raises(KeyboardInterrupt):
            train(make_cfg(cut, *common))
    train(make_cfg(cut, *common, "resume=true"))

    a, b = safe_torch_load(full / "last.pth.tar"), safe_torch_load(cut / "last.pth.tar")
    assert a["epoch"] == b["epoch"] == 1 and a["global_step"] == b["global_step"] == 4
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for i, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][i][key]), (i, key)
    for key, value in a["balanced"].items():
        assert torch.equal(value, b["balanced"][key]), key
    assert torch.equal(a["rng"]["cpu"], b["rng"]["cpu"])
    assert read_metrics(full / "metrics.jsonl") == read_metrics(cut / "metrics.jsonl")
    names = {p.name for p in cut.iterdir()}
    assert {"balanced_state_best.pth", "balanced_state_0.pth", "epoch_0.pth.tar"} <= names
    weights = read_metrics(cut / "metrics.jsonl")[0]
    assert {"train/task_weight_distortion", "train/task_weight_bpp"} <= set(weights)


# ----------------------------------------------------------------------------- bad input
def test_resume_refuses_another_model_or_optimizer(make_cfg, tmp_path: Path) -> None:
    build_trainer(make_cfg(tmp_path)).save(0, is_best=False, periodic=False)
    last = tmp_path / "last.pth.tar"
    with pytest.raises(
        CheckpointError, match="holds model 'tiny' with other sizes: M=32 \\(this run: 64\\)"
    ):
        build_trainer(make_cfg(tmp_path, "+model.M=64")).resume(last)
    with pytest.raises(CheckpointError, match="trained with optimizer=adam"):
        build_trainer(make_cfg(tmp_path, "optimizer=balanced")).resume(last)
    with pytest.raises(CheckpointError, match="not found"):
        train(make_cfg(tmp_path / "new", f"resume={tmp_path / 'missing'}"))
    with pytest.raises(ConfigError, match="resume=true but"):
        train(make_cfg(tmp_path / "other", "resume=true"))


def test_unset_data_folders_are_one_line_errors(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data.train_dir and data.test_dir must be set, e\.g\."):
        check_config(make_cfg(tmp_path, "data=folder", short=False))
    with pytest.raises(ConfigError, match=r"^data.root must be set, e\.g\. data.root=DIR$"):
        check_config(make_cfg(tmp_path, "data=flickr2w", short=False))


def test_resume_of_a_checkpoint_in_the_earlier_layout(make_cfg, tmp_path: Path) -> None:
    # Checkpoints written before the config groups were built with _target_ and the entropy
    # models owned their tables: optimizer.base a name, the table buffers on the model.
    build_trainer(make_cfg(tmp_path, "optimizer=balanced")).save(0, is_best=False, periodic=False)
    ckpt = safe_torch_load(tmp_path / "last.pth.tar")
    renamed = {new: old for old, new in LEGACY_TABLE_KEYS.items()}
    ckpt["state_dict"] = {renamed.get(k, k): v for k, v in ckpt["state_dict"].items()}
    assert "y_cdf" in ckpt["state_dict"]
    ckpt["config"]["optimizer"]["base"] = "cautious_adam"
    torch.save(ckpt, tmp_path / "old.pth.tar")
    trainer = build_trainer(make_cfg(tmp_path, "optimizer=balanced"))
    trainer.resume(tmp_path / "old.pth.tar")
    assert trainer.progress.next_epoch == 1
    with pytest.raises(CheckpointError, match="trained with optimizer=balanced"):
        build_trainer(make_cfg(tmp_path, "optimizer=balanced", "optimizer/base=adam")).resume(
            tmp_path / "old.pth.tar"
        )


def save_image(path: Path, height: int, width: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_folder_data_with_test_images_of_any_size(short_run, make_cfg, tmp_path: Path) -> None:
    for i in range(2):
        save_image(tmp_path / "train" / f"{i}.png", 260, 270, seed=i)
    save_image(tmp_path / "test" / "odd.png", 300, 200, seed=5)  # padded to 512x256 for the model
    (tmp_path / "train" / "broken.jpg").write_bytes(b"not a jpeg")
    short = [o for o in short_run if not o.startswith("data.")]
    folders = [
        "data=folder",
        f"data.train_dir={tmp_path / 'train'}",
        f"data.test_dir={tmp_path / 'test'}",
        "data.batch_size=2",
        "data.num_workers=0",
    ]
    cfg = make_cfg(tmp_path / "run", *short, *folders, short=False)
    with pytest.raises(DataError, match=r"^cannot read image .*broken\.jpg: "):
        train(cfg)  # before any training
    cfg = make_cfg(tmp_path / "run", *short, *folders, "data.skip_bad_images=true", short=False)
    with pytest.warns(DataWarning, match=r"skipped 1 unreadable .*broken\.jpg"):
        assert math.isfinite(train(cfg))
    test = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert test["test/bpp_loss"] > 0 and math.isfinite(test["test/psnr"])


def test_empty_data_folder_is_a_data_error(short_run, make_cfg, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    short = [o for o in short_run if not o.startswith("data.samples_per_epoch")]  # embedded only
    cfg = make_cfg(
        tmp_path / "run",
        *short,
        "data=folder",
        f"data.train_dir={empty}",
        f"data.test_dir={empty}",
        "data.num_workers=0",
        short=False,
    )
    with pytest.raises(DataError, match="no usable images"):
        train(cfg)


def test_bad_data_folder_gives_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "data=folder", f"data.train_dir={missing}",
         f"data.test_dir={missing}", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
        check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: image folder not found: {missing}"


def test_metrics_file_holds_valid_json_for_non_finite_values(tmp_path: Path) -> None:
    from hpcm.train.tracking import MetricsFile

    metrics = MetricsFile(tmp_path / "m.jsonl")
    metrics.write({"step": 1, "test/loss": float("nan")})
    metrics.close()
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"step": 1, "test/loss": "nan"}
