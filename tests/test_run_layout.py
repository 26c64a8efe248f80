"""The run directory's readers (hpcm.run_layout): config, metrics, the checkpoint that stands for a
run, finished.json."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from hpcm import run_layout
from hpcm.run_layout import RunDirError


def test_read_config_of_a_run(tmp_path: Path) -> None:
    assert run_layout.read_config(tmp_path) is None  # not a run (yet)
    (tmp_path / run_layout.CONFIG).write_text("- a list\n")
    assert run_layout.read_config(tmp_path) == {}
    (tmp_path / run_layout.CONFIG).write_text("lmbda: 0.013\noptimizer:\n  name: adam\n")
    assert run_layout.read_config(tmp_path) == {"lmbda": 0.013, "optimizer": {"name": "adam"}}


def test_read_metrics_skips_a_cut_line_and_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="no metrics.jsonl"):
        run_layout.read_metrics(tmp_path)
    path = tmp_path / run_layout.METRICS_FILE
    path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/lo')
    assert run_layout.read_metrics(tmp_path) == [{"step": 1, "train/loss": 2.0}]
    assert run_layout.read_metrics(path) == run_layout.read_metrics(tmp_path)
    path.write_text('{"step": 2, "tr')
    with pytest.raises(RunDirError, match="no records"):
        run_layout.read_metrics(tmp_path)


def test_the_checkpoint_of_a_run_and_its_names(tmp_path: Path) -> None:
    assert run_layout.run_checkpoint(tmp_path) is None
    (tmp_path / run_layout.LAST_CHECKPOINT).touch()
    assert run_layout.run_checkpoint(tmp_path) == tmp_path / "last.pth.tar"
    (tmp_path / run_layout.BEST_CHECKPOINT).touch()
    assert run_layout.run_checkpoint(tmp_path) == tmp_path / "epoch_best.pth.tar"
    assert run_layout.epoch_checkpoint(3) == "epoch_3.pth.tar"
    assert run_layout.epoch_balanced_state(3) == "balanced_state_3.pth"


def test_finished_runs(tmp_path: Path) -> None:
    assert run_layout.finished_result(tmp_path, 1) is None
    run_layout.mark_finished(tmp_path, 4, 0.5)
    assert run_layout.finished_result(tmp_path, 4) == 0.5
    assert run_layout.finished_result(tmp_path, 5) is None  # a longer run is asked for
    run_layout.mark_finished(tmp_path, 4, math.nan)  # diverged: JSON has no NaN
    assert math.isnan(run_layout.finished_result(tmp_path, 4))


def test_the_layout_imports_without_torch() -> None:
    # python -m hpcm.plot and the eval readers read runs on machines without a training setup.
    code = "import sys, hpcm.run_layout; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
