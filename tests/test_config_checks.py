"""Every numeric value the model and the run constrain is checked at configuration time, in one
line, before any data is loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpcm.train.build import ConfigError, check_config

ROOT = Path(__file__).resolve().parents[1]

BAD = [
    ("data.crop_size=128", "data.crop_size=128: HPCM trains on crops whose sides are multiples"),
    ("data.crop_size=[256,300]", "multiples of 256"),
    ("data.crop_size=0", "crop size must be positive"),
    ("data.test_crop_size=-256", "data.test_crop_size=-256: crop size must be positive"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("data.test_batch_size=0", "data.test_batch_size must be >= 1, got 0"),
    ("data.batch_size=2.5", "data.batch_size must be an integer, got 2.5"),
    ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
    ("data.samples_per_epoch=0", "data.samples_per_epoch must be >= 1 or null, got 0"),
    ("trainer.epochs=abc", "trainer.epochs must be an integer, got abc"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be >= 1, got 0"),
    ("trainer.max_steps_per_epoch=0", "trainer.max_steps_per_epoch must be >= 1 or null"),
    ("trainer.lr_schedule.factors=[0.3,0.1]", "milestones and factors differ in length"),
    ("trainer.lr_schedule.factors=[0.3,0,0.1]", "factors must be > 0"),
    ("trainer.lr_schedule.milestones=[2950,2850,2750]", "milestones must be increasing"),
    ("trainer.lr_schedule.milestones=[-1,2850,2950]", "milestones must be >= 0, got -1"),
    ("trainer.lr_schedule.reference_epochs=0", "reference_epochs must be >= 1, got 0"),
    (
        "trainer.lr_schedule.milestones=[0,2850,2950]",
        "a milestone at epoch 0 has factor 1, got 0.3",
    ),
    ("optimizer.lr=-1e-4", "optimizer.lr must be >= 0.0, got -0.0001"),
    ("optimizer.lr=nan", "optimizer.lr must be >= 0.0, got nan"),
    ("optimizer.clip_max_norm=-1", "optimizer.clip_max_norm must be >= 0.0 or null, got -1"),
    ("lmbda=-0.01", "lmbda must be >= 0.0, got -0.01"),
    ("seed=-1", "seed must be >= 0, got -1"),
]


@pytest.mark.parametrize("override, message", BAD, ids=[o for o, _ in BAD])
def test_bad_values_are_one_line_config_errors(
    make_cfg, tmp_path: Path, override: str, message: str
):
    with pytest.raises(ConfigError) as info:
        check_config(make_cfg(tmp_path, override))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_defaults_and_null_values_pass(make_cfg, tmp_path: Path) -> None:
    assert check_config(make_cfg(tmp_path, short=False)) is None  # raises on a bad value
    for clip, value in (("null", None), ("0", 0)):  # no clipping, as CompressAI's clip_max_norm=0
        cfg = make_cfg(tmp_path, f"optimizer.clip_max_norm={clip}", "data.samples_per_epoch=null")
        assert (cfg.optimizer.clip_max_norm, cfg.data.samples_per_epoch) == (value, None)
        assert check_config(cfg) is None
    # The boundaries of the checked ranges pass too: a frozen run (lr 0), workers off.
    cfg = make_cfg(tmp_path, "optimizer.lr=0", "data.num_workers=0", "seed=0")
    assert (cfg.optimizer.lr, cfg.data.num_workers, cfg.seed) == (0, 0, 0)
    assert check_config(cfg) is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.crop_size=128", BAD[0][1]),
        ("trainer.lr_schedule.factors=[0.3,0.1]", "milestones and factors differ in length"),
    ],
)
def test_the_command_line_fails_before_loading_data(tmp_path: Path, override: str, message: str):
    # A data folder that does not exist: the check must come first, so it is never looked at.
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), override, "logger=none", "data=folder",
         f"data.train_dir={tmp_path / 'none'}", f"data.test_dir={tmp_path / 'none'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        check=False, capture_output=True, text=True, cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert result.returncode == 1
    lines = [line for line in result.stderr.strip().splitlines() if "warn" not in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
