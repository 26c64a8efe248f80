"""The learning-rate search of experiment=factorial_lr_cpu: every run scored by the validation
loss at the target trade-off, whatever its nominal lambda, and each optimizer's choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from hpcm.eval import lr_search


def _run(sweep: Path, optimizer: str, lr: float, lmbda: float, bpp: float, mse: float) -> None:
    """A finished run directory as the trainer leaves it (config.yaml, metrics.jsonl with a
    training record and the last validation at step 600, ``mse`` in 255^2 units)."""
    run = sweep / f"{optimizer}_lr{lr}"
    run.mkdir(parents=True)
    config = {
        "seed": 100,
        "lmbda": lmbda,
        "optimizer": {"name": optimizer, "lr": lr},
        "lr_search": {"target_lambda": 0.0067},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    records = [
        {"step": 300, "train/loss": 9.0},
        {"step": 300, "test/bpp_loss": 9.0, "test/distortion": 9.0},  # an earlier validation
        {"step": 600, "test/bpp_loss": bpp, "test/distortion": lmbda * mse},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_every_run_is_scored_at_the_target_and_each_optimizer_gets_its_best_lr(tmp_path):
    sweep = tmp_path / "sweep"
    # adam trains at the target; its best lr lies inside the searched values
    for lr, bpp, mse in [(1e-3, 0.30, 60.0), (2e-3, 0.28, 55.0), (4e-3, 0.29, 58.0)]:
        _run(sweep, "adam", lr, 0.0067, bpp, mse)
    # balanced trains at a higher nominal lambda (FAMO lowers its effective one): scored at the
    # target, its lowest test/loss at its own lambda (lr 1e-3) is not its best J (lr 4e-3)
    for lr, bpp, mse in [(1e-3, 0.40, 40.0), (2e-3, 0.30, 52.0), (4e-3, 0.26, 53.0)]:
        _run(sweep, "balanced", lr, 0.02, bpp, mse)
    paths = lr_search.write_report(sweep, tmp_path / "report")
    runs, target = lr_search.read_search(sweep)
    assert target == 0.0067 and len(runs) == 6
    scores = {(r.optimizer, r.lr): r.score(target) for r in runs}
    assert scores[("balanced", 1e-3)] == pytest.approx(0.40 + 0.0067 * 40.0)
    assert scores[("adam", 2e-3)] == pytest.approx(0.28 + 0.0067 * 55.0)
    choice = json.loads(paths[2].read_text())
    assert choice["lr"] == {"adam": 2e-3, "balanced": 4e-3}
    assert choice["at_edge"] == ["balanced"]  # its optimum may lie above 4e-3
    table = paths[1].read_text()
    assert "| adam | 0.7020 | **0.6485** | 0.6786 | 0.002 |" in table
    assert "| balanced |" in table and "widen them" in table
    assert paths[3].stat().st_size > 0
    # an explicit target overrides the recorded one, and changes the choice
    runs, target = lr_search.read_search(sweep, target=0.1)
    assert lr_search.choose(lr_search.table(runs, target))["balanced"] == (1e-3, True)


def test_no_runs_or_disagreeing_targets_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert lr_search.main([str(tmp_path / "empty")]) == 1
    assert "no validated training run" in capsys.readouterr().err
    assert lr_search.main([str(tmp_path / "none")]) == 1
    sweep = tmp_path / "sweep"
    _run(sweep, "adam", 1e-3, 0.0067, 0.3, 60.0)
    config = yaml.safe_load((sweep / "adam_lr0.001" / "config.yaml").read_text())
    config["lr_search"]["target_lambda"] = 0.013
    _run(sweep, "adam", 2e-3, 0.0067, 0.3, 60.0)
    (sweep / "adam_lr0.002" / "config.yaml").write_text(yaml.safe_dump(config))
    assert lr_search.main([str(sweep)]) == 1
    assert "target lambdas 0.0067, 0.013; give --target" in capsys.readouterr().err
    assert lr_search.main([str(sweep), "--target", "0.0067"]) == 0


def _train_losses(run: Path, losses: list[float]) -> None:
    """Replace the run's training records by one per 10 steps with these losses."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kept = [r for r in records if "train/loss" not in r]
    train = [{"step": 10 * (i + 1), "train/loss": loss} for i, loss in enumerate(losses)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train + kept))


def test_divergence_is_a_loss_that_fell_and_rose_or_a_non_finite_one():
    falling = [5.0, 2.0, 1.2, 1.0, 0.95, 0.97, 0.93, 1.0, 0.9, 0.92]
    assert (
        lr_search.divergence([{"step": i, "train/loss": x} for i, x in enumerate(falling)]) is None
    )
    rising = [5.0, 2.0, 1.0, 0.9, 1.0, 1.5, 4.0, 17.0, 8.0, 3.0]
    why = lr_search.divergence([{"step": i, "train/loss": x} for i, x in enumerate(rising)])
    assert why is not None and "around step 6" in why and "4.4x its lowest 0.9" in why
    # a resumed run logs a step twice: its latest record counts
    resumed = [{"step": 0, "train/loss": 1.0}, {"step": 1, "train/loss": 9.0}]
    assert lr_search.divergence(resumed + [{"step": 1, "train/loss": 0.9}]) is None
    assert lr_search.divergence(resumed) is not None
    nan = [{"step": 1, "train/loss": 1.0}, {"step": 2, "test/loss": float("nan")}]
    assert lr_search.divergence(nan) == "non-finite test/loss at step 2"
    # as metrics.jsonl holds it (JSON has no NaN: the trainer writes the string)
    assert lr_search.divergence([nan[0], {"step": 3, "train/loss": "inf"}]) == (
        "non-finite train/loss at step 3"
    )


def test_an_lr_that_diverges_at_a_grid_extreme_is_excluded(tmp_path, capsys):
    sweep, check = tmp_path / "sweep", tmp_path / "extremes"
    for lr, bpp, mse in [(1e-3, 0.40, 40.0), (2e-3, 0.30, 52.0), (4e-3, 0.26, 53.0)]:
        _run(sweep, "balanced", lr, 0.02, bpp, mse)
    _run(sweep, "adam", 2e-3, 0.0067, 0.3, 50.0)
    healthy = [5.0, 2.0, 1.2, 1.0, 0.95, 0.9, 0.9, 0.88, 0.87, 0.86]
    for lr, lmbda, losses in [
        (4e-3, 0.001, [5.0, 2.0, 1.0, 0.9, 1.0, 1.5, 4.0, 17.0, 8.0, 3.0]),  # diverges
        (4e-3, 0.05, healthy),
        (2e-3, 0.001, healthy),
        (2e-3, 0.05, healthy),
        (1e-2, 0.001, [float("nan")]),  # an lr the search did not score: ignored
    ]:
        _run(check / str(lmbda), "balanced", lr, lmbda, 0.1, 50.0)
        _train_losses(check / str(lmbda) / f"balanced_lr{lr}", losses)
    # without the check, balanced's best J (4e-3) at the edge; with it, 2e-3, not at an edge
    # since the lr above it diverged
    assert json.loads(lr_search.write_report(sweep, tmp_path / "a")[2].read_text())["lr"] == {
        "adam": 2e-3,
        "balanced": 4e-3,
    }
    assert lr_search.main([str(sweep), "--check", str(check), "--out", str(tmp_path / "b")]) == 0
    choice = json.loads((tmp_path / "b" / "lr_search.json").read_text())
    assert choice["lr"] == {"adam": 2e-3, "balanced": 2e-3}
    assert choice["at_edge"] == []
    assert list(choice["excluded"]["balanced"]) == ["0.004"]
    assert "diverged at lambda 0.001: training loss" in choice["excluded"]["balanced"]["0.004"]
    table = capsys.readouterr().out
    assert (
        "| balanced | 0.6680 | **0.6484** | 0.6151 (excluded) | 0.002 (checked at 0.001, 0.05) |"
        in table
    )
    assert "| adam | " in table and "(unchecked)" in table
    assert (
        "| balanced | 0.004 | 0.05 | 100 | 0.1000 | 50.0 | no | extremes/0.05/balanced_lr0.004 |"
        in table
    )
    # the same run in two check folders (a sweep and a copy of it): one row each, named apart
    shutil.copytree(check / "0.05", tmp_path / "copy")
    assert (
        lr_search.main([str(sweep), "--check", str(check), "--check", str(tmp_path / "copy")]) == 0
    )
    rows = [
        r
        for r in capsys.readouterr().out.splitlines()
        if r.startswith("| balanced | 0.004 | 0.05 ")
    ]
    assert [r.rsplit("|", 2)[1].strip() for r in rows] == [
        "copy/balanced_lr0.004",
        "extremes/0.05/balanced_lr0.004",
    ]
    # a check folder with nothing of the search in it is a one-line error
    (tmp_path / "other").mkdir()
    assert lr_search.main([str(sweep), "--check", str(tmp_path / "other")]) == 1
    assert "no validated run of a searched optimizer and lr" in capsys.readouterr().err
