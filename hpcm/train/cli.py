"""The training command: ``python train.py [group=option ...] [key=value ...]``.

:func:`main` is the Hydra application of ``hpcm/conf/train.yaml``, shipped inside the package so
that ``hpcm-train`` works from any directory (``train.py`` only calls it). Its one translation of
the command line: a numeric ``lambda`` choice (``lambda=0.013``, or a sweep
``lambda=0.0018,0.013``) is quoted before Hydra parses it, because Hydra reads the number as a
float and accepts only strings as config-group choices (hydra-core 1.3: "Config group override
must be a string or a list"). The same pass refuses an unknown option of any group in one line.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hpcm.train.build import USER_ERRORS, ConfigError, train
from hpcm.train.interrupt import TrainingInterrupted

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def prepare_overrides(args: Sequence[str], conf_dir: str | Path = CONF_DIR) -> list[str]:
    """Command-line overrides checked against the config groups in ``conf_dir``.

    An unknown option of a group (``model=foo``) raises a one-line :class:`ConfigError`. Numeric
    ``lambda`` options are quoted (``lambda=0.0130`` -> ``lambda='0.013'``, the name of its
    file); everything else (flags, other sweep syntax) goes to Hydra unchanged.
    """
    conf_dir = Path(conf_dir)
    out = []
    for arg in args:
        match = re.fullmatch(r"(\w+(?:/\w+)*)=([\w.\-,]+)", arg)  # group or group/subgroup
        # hydra/... groups have options in Hydra's plugins too: Hydra checks those.
        if not match or match[1].startswith("hydra/") or not (conf_dir / match[1]).is_dir():
            out.append(arg)
            continue
        group = match[1]
        options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        chosen = [_option_name(group, value) for value in match[2].split(",")]
        for value in chosen:
            if value not in options and value != "null":
                hint = (
                    f"; any value: lmbda={value} (MS-SSIM: add metric=ms-ssim)"
                    if group == "lambda"
                    else ""
                )
                raise ConfigError(
                    f"unknown {group} {value!r}; choose from {', '.join(options)}{hint}"
                )
        out.append(f"{group}=" + ",".join(f"'{v}'" for v in chosen))
    return out


def _option_name(group: str, value: str) -> str:
    if group != "lambda":
        return value
    try:
        return repr(float(value))  # 0.0130 -> '0.013', the name of its file
    except ValueError:
        return value


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _app(cfg: DictConfig) -> float:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        loss = train(cfg, multirun=multirun)
    except USER_ERRORS as error:
        if multirun:
            raise  # a sweep records the failed trial and goes on
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except TrainingInterrupted as stop:  # saved: the process (a sweep too) ends, non-zero
        log.warning("%s", stop)
        sys.exit(stop.exit_code)
    if not math.isfinite(loss) and multirun:
        # A diverged trial must fail: Optuna rejects a NaN value, which would end the study.
        raise FloatingPointError("diverged: no validation gave a finite loss")
    return loss


def main() -> None:
    """Run the training application on ``sys.argv``."""
    try:
        sys.argv[1:] = prepare_overrides(sys.argv[1:])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    _app()
