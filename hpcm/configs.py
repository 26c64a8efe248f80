"""Where the Hydra configs are: ``hpcm/conf`` inside an installed wheel, else ``conf/`` beside
the package (a checkout, or an editable install of one)."""

from __future__ import annotations

from pathlib import Path


def _config_dir() -> Path:
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"the training configs (conf/train.yaml) are missing beside {package}")


CONF_DIR = _config_dir()
