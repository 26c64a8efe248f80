"""The Hydra configs sit at the repository root (conf/) and install inside the package
(hpcm/conf): the training command composes them from any directory, run from a checkout (as an
editable install runs) or installed from a wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def _check_official_trainer(job: str) -> None:
    """`--cfg job trainer=hpcm` printed the composed config of the official trainer."""
    assert "epochs: 3001" in job and "lr: 0.0001" in job and "name: tiny" in job


def test_train_py_composes_the_configs_from_another_directory(tmp_path: Path) -> None:
    job = _run([sys.executable, str(ROOT / "train.py"), "--cfg", "job", "trainer=hpcm"], tmp_path)
    _check_official_trainer(job)
    assert not list(tmp_path.iterdir())  # printing the config writes no run directory


@pytest.mark.slow
def test_a_wheel_install_ships_every_module_and_config(tmp_path: Path) -> None:
    """A wheel built from the checkout, installed into a fresh venv (its dependencies from this
    environment): every module and config is in it, and hpcm-train runs from any directory."""
    src = tmp_path / "src"  # the build writes build/ and *.egg-info: not into the checkout
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("hpcm", "conf", "hydra_plugins"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps"]
    _run([*pip_wheel, "--no-build-isolation", "-q", "-w", str(dist)], tmp_path)
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    modules = {
        p.relative_to(ROOT).as_posix()
        for package in ("hpcm", "hydra_plugins")
        for p in (ROOT / package).rglob("*.py")
    }
    configs = {f"hpcm/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert "hpcm/conf/train.yaml" in configs
    assert modules - names == set() and configs - names == set()

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path)
    python, train = venv / "bin" / "python", venv / "bin" / "hpcm-train"
    install = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall"]
    _run([*install, str(wheel)], tmp_path)
    where = _run([str(python), "-c", "import hpcm.train.cli as c; print(c.CONF_DIR)"], tmp_path)
    assert Path(where.strip()).is_relative_to(venv), where  # the installed copy, not the checkout
    _check_official_trainer(_run([str(train), "--cfg", "job", "trainer=hpcm"], tmp_path))
