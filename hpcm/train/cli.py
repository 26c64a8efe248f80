"""The training command: ``python train.py [group=option ...] [key=value ...]``.

:func:`main` is the Hydra application of ``conf/train.yaml``, which installs with the package as
``hpcm/conf`` so that ``hpcm-train`` works from any directory (``train.py`` only calls it). Its one translation of
the command line: a numeric ``lambda`` choice (``lambda=0.013``, or a sweep
``lambda=0.0018,0.013``) is quoted before Hydra parses it, because Hydra reads the number as a
float and accepts only strings as config-group choices (hydra-core 1.3: "Config group override
must be a string or a list"). The same pass refuses an unknown option of any group in one line.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.types import RunMode
from omegaconf import DictConfig

from hpcm.configs import CONF_DIR
from hpcm.eval.showcase import show_run
from hpcm.train.build import USER_ERRORS, ConfigError, train
from hpcm.train.curve_search import CurveError, train_curve
from hpcm.train.interrupt import (
    STOP_FILE,
    StopRequest,
    SweepSignals,
    SweepStopped,
    TrainingInterrupted,
    ignore_signals,
    read_stop_file,
    signal_exit_code,
)
from hydra_plugins.hpcm_sweeper import OptunaSearchSweeper

log = logging.getLogger(__name__)


def prepare_overrides(args: Sequence[str], conf_dir: str | Path = CONF_DIR) -> list[str]:
    """Command-line overrides checked against the config groups in ``conf_dir``.

    An unknown option of a group (``model=foo``) raises a one-line :class:`ConfigError`. Numeric
    ``lambda`` options are quoted (``lambda=0.0130`` -> ``lambda='0.013'``, the name of its
    file), and so are the factorial's grid indices (``point=1`` -> ``point='1'``: OmegaConf
    selects a list element in an interpolation by a string only); everything else (flags,
    other sweep syntax) goes to Hydra unchanged.
    """
    conf_dir = Path(conf_dir)
    out = []
    for arg in args:
        index = re.fullmatch(r"point=(\d+(?:,\d+)*)", arg)
        if index:
            out.append("point=" + ",".join(f"'{i}'" for i in index[1].split(",")))
            continue
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
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    stop_file = Path(str(hydra_cfg.sweep.dir)) / STOP_FILE if multirun else None
    worker = multirun and not SweepSignals.in_this_process()
    if worker:  # a launcher's process: its sweep's process is the one that handles signals
        ignore_signals()
    try:
        if stop_file is not None and (signum := read_stop_file(stop_file)) is not None:
            raise SweepStopped(
                signum,
                f"not started: the sweep was stopped by {signal.Signals(signum).name} "
                f"({stop_file}); the same command continues it",
            )
        stop = StopRequest(stop_file)
        with stop.installed():  # the whole job: setup, training, the end-of-run steps
            if "curve" in cfg:  # hparams_search=balanced_bdrate: a lambda curve, its BD-rate
                loss = train_curve(cfg, multirun=multirun, stop=stop)
            else:
                loss = train(cfg, multirun=multirun, show=show_run, stop=stop)
    except (*USER_ERRORS, CurveError) as error:
        if multirun:
            raise  # a sweep records the failed trial and goes on
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except TrainingInterrupted as interrupted:  # saved, or never started
        log.warning("%s", interrupted)
        if worker:  # the job fails, so that the launcher waits for the other jobs to save
            raise  # (joblib kills its worker processes when one exits)
        sys.exit(interrupted.exit_code)  # the only job running in this process: it (the sweep) ends
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
    # Hydra's plugin scan misses a hydra_plugins package of an editable install: named here.
    Plugins.instance().register(OptunaSearchSweeper)
    try:
        _app()
    except SystemExit:
        if SweepSignals.received is None:
            raise
    # A sweep that was told to stop ends with the signal's status, whatever its sweeper did with
    # the stopped jobs (Hydra prints the first one's error; Optuna records them as failed).
    if SweepSignals.received is not None:
        name = signal.Signals(SweepSignals.received).name
        print(f"sweep stopped by {name}: the same command continues it", file=sys.stderr)
        sys.exit(signal_exit_code(SweepSignals.received))
