"""The end of ``python train.py -m experiment=compare``: evaluate every run of the sweep with real
bitstreams, then the seed-paired BD-rate report, both into the sweep directory.

A Hydra callback (``hydra.callbacks.compare``) whose ``on_multirun_end`` runs in the launching
process once every job has finished: ``SWEEP/eval`` gets one CompressAI JSON per (optimizer,
seed) and the per-image CSV (``evaluate.py``), ``SWEEP/report`` the tables and plots against the
reference optimizer (``bdrate.py``) and where every run really trained (its effective lambda,
``hpcm.eval.trade_off``). Re-running the same command after an interruption continues
the unfinished runs (``resume=auto``), skips the finished ones, and evaluates again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from hpcm.eval import evaluate, report, trade_off
from hpcm.eval.plots import MSSSIM_GROUP_SUFFIX

log = logging.getLogger(__name__)


def reference_curve(reference: str, metric: str) -> str:
    """The curve name of the reference optimizer's runs in ``SWEEP/eval``: ``compare.reference``
    names an optimizer, and evaluate.py names the curves of MS-SSIM-trained runs OPTIMIZER-msssim
    (``metric``: the sweep's training metric, ``mse`` or ``ms-ssim``)."""
    if metric == "ms-ssim" and not reference.endswith(MSSSIM_GROUP_SUFFIX):
        return reference + MSSSIM_GROUP_SUFFIX
    return reference


def evaluate_and_report(
    sweep_dir: Path, settings: DictConfig, device: str | None, trained_for: str = "mse"
) -> int:
    """Evaluate ``sweep_dir`` into ``sweep_dir/eval`` and report into ``sweep_dir/report``
    (``trained_for``: the runs' training metric); returns the exit status of the step that
    failed (0: both ran)."""
    reference = reference_curve(str(settings.reference), trained_for)
    eval_dir, report_dir = sweep_dir / "eval", sweep_dir / "report"
    argv = [str(sweep_dir), "--dataset", str(settings.dataset), "--out", str(eval_dir)]
    if settings.get("limit"):
        argv += ["--limit", str(settings.limit)]
    if device and device != "auto":
        argv += ["--device", device]
    status = evaluate.main(argv)
    if status:
        return status
    bootstrap = _bootstrap_args(settings)
    for metric in settings.metrics:
        status = report.main(
            [
                str(eval_dir),
                "--reference",
                reference,
                "--metric",
                str(metric),
                *bootstrap,
                "--out",
                str(report_dir),
            ]
        )
        if status:
            return status
    for curve, against in settings.get("pairs") or []:
        status = report_pair(eval_dir, report_dir, str(curve), str(against), settings, trained_for)
        if status:
            return status
    try:
        trade_off.write_report(sweep_dir, report_dir)
    except trade_off.TradeOffError as error:  # e.g. runs that logged no training step
        log.warning("no effective-lambda report: %s", error)
    return 0


def report_pair(
    eval_dir: Path,
    report_dir: Path,
    curve: str,
    against: str,
    settings: DictConfig,
    trained_for: str = "mse",
) -> int:
    """One reading of ``compare.pairs``: the curves of optimizer ``curve`` against those of
    ``against``, seed by seed, into ``report_dir/CURVE_vs_AGAINST`` (exit status of the report;
    1 when either has no curve in ``eval_dir``)."""
    curve, against = reference_curve(curve, trained_for), reference_curve(against, trained_for)
    files = {name: _curve_files(eval_dir, name) for name in (curve, against)}
    missing = [name for name, found in files.items() if not found]
    if missing:
        log.error("compare.pairs: no curve of %s in %s", " or ".join(missing), eval_dir)
        return 1
    bootstrap = _bootstrap_args(settings)
    out = report_dir / f"{curve}_vs_{against}"
    # one reference curve without seeds serves every seed
    seeded = len(files[against]) > 1
    reference = eval_dir / f"{against}_seed*.json" if seeded else files[against][0]
    argv = [*map(str, files[curve]), "--reference", str(reference)]
    for metric in settings.metrics:
        status = report.main([*argv, "--metric", str(metric), *bootstrap, "--out", str(out)])
        if status:
            return status
    return 0


def _bootstrap_args(settings: DictConfig) -> list[str]:
    """``--bootstrap N`` of ``compare.bootstrap``; none when null (the report's own default)."""
    replicates = settings.get("bootstrap")
    return [] if replicates is None else ["--bootstrap", str(replicates)]


def _curve_files(eval_dir: Path, name: str) -> list[Path]:
    """The curves evaluate.py wrote for optimizer ``name``: NAME_seedN.json, or NAME.json."""
    return sorted(eval_dir.glob(f"{name}_seed*.json")) or sorted(eval_dir.glob(f"{name}.json"))


class CompareReport(Callback):
    """``on_multirun_end``: evaluation and BD-rate report of the whole sweep (settings in the
    config's ``compare`` node: dataset, reference, metrics, bootstrap, limit)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        log.info("all runs done; evaluating %s with real bitstreams", sweep_dir)
        status = evaluate_and_report(
            sweep_dir, config.compare, str(config.trainer.device), str(config.metric)
        )
        if status:
            log.error("the comparison report was not written (status %d, see above)", status)
            return
        log.info("comparison written to %s", sweep_dir / "report")
