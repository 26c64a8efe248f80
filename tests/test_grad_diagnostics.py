"""Per-task gradient diagnostics (trainer.grad_diagnostics_every): the logged norms, ratio and
cosine equal a direct computation, for every balancer."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hpcm.optim.grad_diagnostics import NAMES
from hpcm.run_layout import read_metrics
from hpcm.train.build import build_trainer, train
from hpcm.train.post_step import rng_state, set_rng_state


def direct(model, criterion, tasks, x, noise):
    """|g_D|, |g_R|, ratio, cosine from two separate forward/backward passes."""
    grads = []
    for part in ("distortion", "rate"):
        set_rng_state(noise, torch.device("cpu"))
        model.zero_grad(set_to_none=True)
        out = model(x)
        task_losses = criterion.task_losses(criterion(out, x), out, tasks)
        (task_losses[0] if part == "distortion" else task_losses[1:].sum()).backward()
        grads.append(
            torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])
        )
    g_d, g_r = grads
    return [
        g_d.norm().item(),
        g_r.norm().item(),
        (g_d.norm() / g_r.norm()).item(),
        torch.nn.functional.cosine_similarity(g_d, g_r, dim=0).item(),
    ]


@pytest.mark.parametrize("optimizer", ["adam", "balanced_hier"])
def test_logged_diagnostics_equal_a_direct_computation(make_cfg, tmp_path, optimizer):
    cfg = make_cfg(tmp_path, f"optimizer={optimizer}", "trainer.grad_diagnostics_every=1")
    trainer = build_trainer(cfg)
    x = next(iter(trainer.loaders.train))
    before = copy.deepcopy(trainer.model)
    noise = rng_state(torch.device("cpu"))
    assert trainer.train_step(x) is not None
    logged = trainer.grad_diagnostics.tolist()
    batch = trainer.speed.batch(x, trainer.device)
    expected = direct(before.train(), trainer.criterion, trainer.tasks, batch, noise)
    assert logged == pytest.approx(expected, rel=1e-4)
    assert -1.0 <= logged[3] <= 1.0 and logged[0] > 0 and logged[1] > 0


def test_a_run_logs_the_diagnostics_every_n_steps(make_cfg, tmp_path):
    every = ("trainer.grad_diagnostics_every=2", "trainer.log_every_n_steps=1")
    loss = train(make_cfg(tmp_path, "optimizer=balanced", *every))
    assert math.isfinite(loss)
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "train/lr" in r]
    assert [all(f"train/{n}" in r for n in NAMES) for r in records] == [False, True]


def test_the_trade_off_report_plots_the_diagnostics(tmp_path, monkeypatch, write_trade_off_run):
    import json

    from hpcm.eval import plots, trade_off

    figures, agg_figure = [], plots.agg_figure
    monkeypatch.setattr(
        trade_off, "agg_figure", lambda size: figures.append(agg_figure(size)) or figures[-1]
    )
    write_trade_off_run(tmp_path / "adam_seed0", "adam", 0.004, 0, 1.0)
    write_trade_off_run(tmp_path / "qp_seed0", "balanced_qp", 0.004, 0, 0.3)
    trade_off.write_report(tmp_path, tmp_path / "plain")
    assert len(figures[-1].axes) == 2  # nothing logged: the plot is as before
    with (tmp_path / "qp_seed0" / "metrics.jsonl").open("a") as f:
        for step, ratio, cosine in [(50, 30.0, -0.05), (100, 25.0, -0.02)]:
            record = {"step": step, "train/grad_norm_ratio": ratio, "train/grad_cosine": cosine}
            f.write(json.dumps(record) + "\n")
    runs = trade_off.read_sweep(tmp_path)
    qp = next(r for r in runs if r.optimizer == "balanced_qp")
    assert qp.diagnostics["train/grad_norm_ratio"] == ([50, 100], [30.0, 25.0])
    assert qp.diagnostics["train/grad_cosine"] == ([50, 100], [-0.05, -0.02])
    trade_off.write_report(tmp_path, tmp_path / "report")
    axes = figures[-1].axes
    assert len(axes) == 4
    assert [line.get_ydata().tolist() for line in axes[2].lines] == [[30.0, 25.0]]
    assert axes[3].get_ylabel() == "cos(g_D, g_R)"
