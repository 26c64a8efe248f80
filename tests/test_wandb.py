"""wandb as its users expect: WANDB_* variables, run names, the wandb directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hpcm.train.cli import CONF_DIR
from hpcm.train.tracking import Tracker, run_name, start_wandb

ENV = {"WANDB_MODE": "disabled", "WANDB_PROJECT": "p", "WANDB_ENTITY": "e", "WANDB_RUN_GROUP": "g"}


def logger_cfg(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.run_dir=unused"])
    return OmegaConf.to_container(cfg.logger, resolve=True)


def test_environment_wins_over_defaults_and_command_line_over_both(monkeypatch) -> None:
    for key in (*ENV, "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)
    plain = logger_cfg()
    assert (plain["mode"], plain["project"], plain["entity"], plain["group"]) == (
        "offline",
        "hpcm-balanced",
        None,
        None,
    )
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    env = logger_cfg()
    assert (env["mode"], env["project"], env["entity"], env["group"]) == ("disabled", "p", "e", "g")
    assert logger_cfg("logger.mode=offline", "logger.group=mine")["mode"] == "offline"
    assert logger_cfg("logger.group=mine")["group"] == "mine"


def test_run_names_carry_the_balancer_settings() -> None:
    base = {"model": {"name": "tiny"}, "metric": "mse", "lmbda": 0.013}
    adam = {**base, "optimizer": {"name": "adam", "balancer": {"_target_": "x"}}}
    assert run_name(adam) == "tiny_adam_mse_0.013"
    famo = {"name": "balanced", "balancer": {"gamma": 0.0031234, "w_lr": 0.025}}
    assert run_name({**base, "optimizer": famo}) == "tiny_balanced_mse_0.013_g0.00312_wlr0.025"


def test_wandb_dir_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_files"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = logger_cfg()
    assert cfg.pop("_target_") == "hpcm.train.tracking.start_wandb" and cfg.pop("_partial_")
    run = start_wandb(tmp_path / "run", {"lmbda": 0.013}, "r", None, **cfg)
    tracker = Tracker(tmp_path / "run", logger_run=run)
    tracker.log({"train/loss": 1.0}, step=1, epoch=0)
    tracker.close()
    assert list((tmp_path / "wandb_files" / "wandb").glob("offline-run-*"))
    assert not (tmp_path / "run" / "wandb").exists()
    assert (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("search", ["hparams_search=balanced_optuna", "sweep=lambdas_mse"])
def test_sweeps_set_a_group(search: str) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[search], return_hydra_config=True)
    expected = {
        "hparams_search=balanced_optuna": "${hydra:sweeper.study_name}",
        "sweep=lambdas_mse": "${hydra:sweep.dir}",
    }[search]
    assert OmegaConf.to_container(cfg.logger)["group"] == expected


def test_evaluation_is_logged_to_the_run_it_belongs_to(tmp_path: Path, monkeypatch, capsys) -> None:
    import torch
    import wandb

    from hpcm.eval import wandb_log

    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    run = wandb.init(mode="offline", dir=str(run_dir), project="p")
    run_id = run.id
    run.finish()
    (run_dir / "config.yaml").write_text("logger:\n  project: p\n  mode: offline\n")
    torch.save({"wandb_run_id": run_id}, run_dir / "epoch_best.pth.tar")
    torch.save({"state_dict": {}}, tmp_path / "official.pth")  # no wandb run: a note
    curve = {
        "results": {"bpp": [0.3, 0.5], "psnr-rgb": [30.0, 32.0]},
        "checkpoints": [str(run_dir / "epoch_best.pth.tar"), str(tmp_path / "official.pth")],
    }
    (tmp_path / "adam.json").write_text(json.dumps(curve))
    (tmp_path / "bd.csv").write_text("curve,bd_rate_percent\nadam,-3.2\n")
    argv = [str(tmp_path / "adam.json"), "--table", str(tmp_path / "bd.csv")]
    assert wandb_log.main(argv) == 0
    captured = capsys.readouterr()
    assert f"logged to 1 wandb run(s): {run_id}" in captured.out
    assert "official.pth has no wandb run" in captured.err
    # The point each run gets (wandb writes offline records in its own service, in its own time,
    # so the files are not checked here).
    points = wandb_log.points_by_run(curve)
    assert points == [(run_id, run_dir, {"bpp": 0.3, "psnr-rgb": 30.0})]
