import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

if "PYTEST_XDIST_WORKER" in os.environ:
    # pytest-xdist runs one worker per core: each (and each command it starts) computes on one
    # thread, so that two workers do not fight over the cores (OpenMP threads spin while waiting).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

from official_weights import KODAK

from hpcm.train.cli import CONF_DIR, prepare_overrides


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def kodak() -> Path:
    if not KODAK.is_dir():
        pytest.skip(f"needs the Kodak images: {KODAK} not found (set HPCM_SHARED)")
    return KODAK


@pytest.fixture
def process_group_of_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What ``torchrun --nproc_per_node=1`` gives its process (with a free port): a trainer built
    with ``trainer.ddp=true`` joins a gloo process group of one, so that DDP and the collectives
    really run in the test's process. The group is left at the end."""
    from hpcm.train.distributed import cleanup

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for key, value in {**env, "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    try:
        yield
    finally:
        cleanup()


# ----------------------------------------------------------------------------- training configs
# `make_cfg(RUN_DIR, *OVERRIDES)`: the config `python train.py OVERRIDES` would get, with its
# run directory in RUN_DIR and, unless short=False, shortened by SHORT_RUN to a few CPU steps of
# the tiny model without logger or end-of-run showcase.
SHORT_RUN = (
    "model=tiny",
    "logger=none",
    "trainer.epochs=1",
    "trainer.max_steps_per_epoch=2",
    "trainer.progress_bar=false",
    "trainer.showcase=false",
    "data.batch_size=2",
    "data.samples_per_epoch=4",
    "data.test_crop_size=256",
)


def compose_train(run_dir: Path | None, *overrides: str, short: bool = True) -> DictConfig:
    args = [*(SHORT_RUN if short else ()), *overrides]
    if run_dir is not None:
        args.append(f"paths.run_dir={run_dir}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=prepare_overrides(args, CONF_DIR))


@pytest.fixture
def make_cfg() -> Callable[..., DictConfig]:
    """The composing function above (``make_cfg(run_dir, *overrides, short=True)``)."""
    return compose_train


@pytest.fixture
def short_run() -> list[str]:
    """The overrides that shorten a run in ``make_cfg`` (to drop some of them)."""
    return list(SHORT_RUN)


# ----------------------------------------------------------------------------- run folders
def _write_trade_off_run(
    run_dir: Path, optimizer: str, lmbda: float, seed: int, ratio: float
) -> None:
    """A run directory as the trainer leaves it: config.yaml and metrics.jsonl, with the
    effective lambda falling from lambda to ``ratio * lambda`` over 100 steps."""
    run_dir.mkdir(parents=True)
    config = {"seed": seed, "lmbda": lmbda, "optimizer": {"name": optimizer}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    lines = []
    for step in range(10, 101, 10):
        effective = lmbda * (1 + (ratio - 1) * step / 100)
        record = {"step": step, "train/effective_lambda": effective}
        if optimizer != "adam":
            record |= {"train/task_weight_distortion": 0.4, "train/task_weight_bpp": 0.6}
        lines.append(json.dumps(record))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def write_trade_off_run() -> Callable[..., None]:
    """``write_trade_off_run(run_dir, optimizer, lmbda, seed, ratio)``: the run folder above."""
    return _write_trade_off_run


# Each run of a sweep test: the tiny model, one step an epoch on a 256x256 crop of the images in
# data/train, one test image in data/test (both relative to the working directory).
FOLDER_RUN = (
    "model=tiny",
    "logger=none",
    "trainer.max_steps_per_epoch=1",
    "trainer.progress_bar=false",
    "trainer.showcase=false",
    "data=folder",
    "data.train_dir=data/train",
    "data.test_dir=data/test",
    "data.batch_size=1",
    "data.num_workers=0",
)


@pytest.fixture
def folder_run() -> list[str]:
    """The overrides of one short run on the folders data/train and data/test."""
    return list(FOLDER_RUN)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory for :data:`FOLDER_RUN`: two training images and one test image of
    noise; sweeps write multirun/ and optuna.db here."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("test", 1)):
        (tmp_path / "data" / split).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / split / f"{i}.png")
    return tmp_path
