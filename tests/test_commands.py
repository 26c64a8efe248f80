"""Installed commands: entry points, configs found from any directory, light imports, no
third-party warnings."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml (tomllib needs Python 3.11; we support 3.10)."""
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]\n")[1]
    lines = section.split("\n[")[0].strip().splitlines()
    return {k.strip(): v.strip().strip('"') for k, v in (line.split("=") for line in lines)}


SCRIPTS = _scripts()


def _python(code: str, cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_every_script_names_a_main_function() -> None:
    assert {"hpcm-train", "hpcm-eval", "hpcm-bdrate", "hpcm-codec"} <= set(SCRIPTS)
    for target in SCRIPTS.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.mark.parametrize("command", ["hpcm-bdrate", "hpcm-eval", "hpcm-codec"])
def test_scripts_answer_help(command: str, capsys: pytest.CaptureFixture) -> None:
    module, _, function = SCRIPTS[command].partition(":")
    with pytest.raises(SystemExit) as exit_info:
        getattr(importlib.import_module(module), function)(["--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_train_finds_its_configs_from_any_directory(tmp_path: Path) -> None:
    # hpcm-train runs hpcm.train.cli:main on sys.argv; the configs ship inside the package.
    # "-W error": neither the imports (compressai's torch.jit.script) nor Hydra may warn.
    code = (
        "import sys, hpcm.codec, hpcm.eval.evaluate\n"
        "from hpcm.train.cli import main\n"
        "sys.argv[1:] = ['--cfg', 'job']\n"
        "main()"
    )
    done = _python(code, tmp_path, "-W", "error")
    assert done.returncode == 0, done.stderr
    assert "_target_: hpcm.build_model" in done.stdout
    assert list(tmp_path.iterdir()) == []  # --cfg job writes nothing


def test_light_command_imports_neither_torch_nor_matplotlib(tmp_path: Path) -> None:
    code = (
        "import sys; import hpcm.eval.report\n"
        "heavy = {'torch', 'matplotlib', 'bjontegaard'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr
