"""The learning-rate search of experiment=factorial_lr_cpu: every run scored by the validation
loss at the target trade-off, whatever its nominal lambda, and each optimizer's choice."""

from __future__ import annotations

import json
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
