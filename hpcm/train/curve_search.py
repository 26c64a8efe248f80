"""The BD-rate objective of ``hparams_search=balanced_bdrate``: one trial trains a short lambda
curve and scores it against a fixed reference curve.

A balancer changes the trade-off a run trains at, so the best validation loss at the nominal
lambda (``hparams_search=balanced_optuna``) rewards a run for staying at the nominal trade-off;
a curve scored by its BD-rate against the plain optimizer's curve does not. With ``curve`` in
the config (the preset sets it), ``train.py`` runs :func:`train_curve` instead of one run:

- the trial's runs: one per ``curve.lambdas`` (at least ``curve.min_points``), in
  ``RUN_DIR/lambda_<value>``;
- the reference: the same config with ``optimizer=curve.reference`` (its config file as
  shipped), one run per ``curve.reference_lambdas``, trained once per configuration and cached
  in ``curve.cache_dir/<key>/lambda_<value>`` with its curve in ``curve.json``; the key is a
  hash of everything that defines a run but its lambda (model, data, trainer, seed, initial
  weights, metric, the reference optimizer), so another model or seed gets its own reference,
  a resumed search reuses it, and a reference extended by more lambdas trains only those (its
  runs resume with ``resume=auto``: finished ones are read, not trained again); trials in
  parallel train it once (a file lock) and share it (a trial that finds another one training
  it trains its own curve meanwhile). Balancing moves the trade-off a run trains at (from
  scratch, FAMO trained at 0.06-0.3x its nominal lambda in docs/compare.md's pilot), so the
  reference spans a wider range than the trial's lambdas: the trial's curve then lies inside
  it and its BD-rate covers the trial's whole quality range;
- the score: the BD-rate (%) of the trial's curve against the reference's, from the last
  validation of each run (estimated bpp from the likelihoods, PSNR); lower is better. The
  trial's curve, and the reference's, are first cut to their Pareto fronts
  (:func:`pareto_front`: a point with more rate and no more quality than another is one nobody
  would choose), and a front of ``curve.min_points`` (the presets: 2; 4 without the key) is
  scored with the pchip fit, which is defined from two points: after 600 steps FAMO gives two
  nominal lambdas the same rate within noise, and the first CPU study lost a trial to a curve
  whose quality dipped by 0.06 dB between them.

Every run goes through :func:`hpcm.train.build.train`, so a killed trial resumes its runs (a
sweep job resumes with ``resume=auto``). A curve whose quality range overlaps the reference's
too little, or whose front is shorter than ``curve.min_points``, has no BD-rate: the trial
fails (recorded as FAIL; the search goes on).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from hpcm.configs import CONF_DIR
from hpcm.eval.report import MIN_POINTS, BDResult, bd_delta, pareto_front
from hpcm.run_layout import METRICS_FILE, last_validation_record, read_metrics
from hpcm.train.build import train
from hpcm.train.interrupt import StopRequest

log = logging.getLogger(__name__)

CURVE_FILE = "curve.json"
# Config keys that do not change what a run trains (where it writes, how it reports).
NOT_DEFINING = ("paths", "logger", "curve", "resume")


class CurveError(ValueError):
    """A curve without a score; the message is one line."""


def _point_config(cfg: DictConfig, lmbda: float, run_dir: Path) -> DictConfig:
    point = cfg.copy()
    with open_dict(point):
        point.lmbda = float(lmbda)
        point.paths.run_dir = str(run_dir)
        del point["curve"]
    return point


def last_validation(run_dir: Path) -> tuple[float, float]:
    """``(bpp, psnr)`` of a run's last logged validation."""
    path = run_dir / METRICS_FILE
    last = last_validation_record(read_metrics(path)) if path.is_file() else None
    if last is None:
        raise CurveError(f"{run_dir}: no validation logged")
    return float(last["test/bpp_loss"]), float(last["test/psnr"])


def train_points(
    cfg: DictConfig, out: Path, multirun: bool, stop: StopRequest | None = None
) -> dict[str, list[float]]:
    """Trains one run per ``curve.lambdas`` under ``out``; returns the curve sorted by bpp."""
    points = []
    for lmbda in cfg.curve.lambdas:
        run_dir = out / f"lambda_{float(lmbda):g}"
        train(_point_config(cfg, float(lmbda), run_dir), multirun=multirun, stop=stop)
        points.append((*last_validation(run_dir), float(lmbda)))
    points.sort()
    return {k: [p[i] for p in points] for i, k in enumerate(("bpp", "psnr", "lambda"))}


def score_curve(
    curve: dict[str, list[float]], reference: dict[str, list[float]], min_points: int
) -> tuple[BDResult, dict[str, list[float]]]:
    """The search's score: the BD-rate of ``curve``'s Pareto front against ``reference``'s
    (pchip, at least ``min_points`` points each), and the front it scored."""
    front, reference_front = pareto_front(curve), pareto_front(reference)
    result = bd_delta(
        "rate",
        (reference_front["bpp"], reference_front["psnr"]),
        (front["bpp"], front["psnr"]),
        min_points=min_points,
    )
    return result, front


def reference_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the reference optimizer's shipped config in place of the trial's (the
    ``optimizer`` group as ``optimizer=NAME`` composes it, its base optimizer included; its
    learning rate ``curve.reference_lr`` when set) and ``curve.reference_lambdas``, when set,
    in place of ``curve.lambdas``."""
    name = str(cfg.curve.reference)
    if not (CONF_DIR / "optimizer" / f"{name}.yaml").is_file():
        raise CurveError(f"curve.reference: no optimizer config {name!r}")
    ref = cfg.copy()
    with open_dict(ref):
        ref.optimizer = _shipped_optimizer(name)
        if ref.curve.get("reference_lr") is not None:
            ref.optimizer.lr = float(ref.curve.reference_lr)
        ref.curve.lambdas = ref.curve.get("reference_lambdas") or ref.curve.lambdas
        ref.resume = "auto"  # trained once: a finished run is read, an interrupted one resumes
    return ref


def _shipped_optimizer(name: str) -> DictConfig:
    """The ``optimizer`` group that ``optimizer=NAME`` composes, alone: composed by the running
    train command's Hydra, or by one started on the shipped configs outside the command."""
    overrides = [f"optimizer={name}"]
    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=overrides).optimizer
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides).optimizer


def reference_key(ref: DictConfig) -> str:
    """Hash of everything that defines a reference run but its lambda (not where it writes or
    reports): the runs of one key differ by their lambda alone."""
    defining = {
        key: OmegaConf.to_container(ref[key], resolve=True) if OmegaConf.is_config(ref[key])
        else ref[key]
        for key in ref
        if key not in NOT_DEFINING
    }  # fmt: skip
    text = json.dumps(defining, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cached_curve(path: Path, lambdas: list[float]) -> dict[str, list[float]] | None:
    """The curve in ``path`` if it holds exactly ``lambdas`` (another list: None)."""
    if not path.is_file():
        return None
    curve = json.loads(path.read_text())
    return curve if sorted(curve["lambda"]) == sorted(lambdas) else None


def reference_curve(
    cfg: DictConfig, multirun: bool, stop: StopRequest | None = None, wait: bool = True
) -> dict[str, list[float]] | None:
    """The reference curve of ``cfg``, from the cache or trained (and cached) now; while another
    trial is training it, that trial's curve once it is done, or None at once without ``wait``."""
    ref = reference_config(cfg)
    folder = Path(str(cfg.curve.cache_dir)) / reference_key(ref)
    cached, lambdas = folder / CURVE_FILE, [float(v) for v in ref.curve.lambdas]
    curve = _cached_curve(cached, lambdas)
    if curve is not None:
        return curve
    folder.mkdir(parents=True, exist_ok=True)
    # Trials running in parallel (hydra.sweeper.n_jobs > 1) share the cache: one trains the
    # reference, the others wait for it instead of training the same runs into the same folders.
    with (folder / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                return None
            log.info("reference curve: another trial is training it into %s; waiting", folder)
            fcntl.flock(lock, fcntl.LOCK_EX)
        curve = _cached_curve(cached, lambdas)
        if curve is not None:
            return curve
        log.info("reference curve (%s): training it once into %s", cfg.curve.reference, folder)
        curve = train_points(ref, folder, multirun, stop)
        cached.write_text(json.dumps(curve, indent=1))
    return curve


def train_curve(cfg: DictConfig, multirun: bool = False, stop: StopRequest | None = None) -> float:
    """Trains the trial's curve and returns its BD-rate (%) against the reference curve."""
    min_points = int(cfg.curve.get("min_points") or MIN_POINTS)
    for key in ("lambdas", "reference_lambdas"):
        if len(cfg.curve.get(key) or cfg.curve.lambdas) < min_points:
            raise CurveError(f"curve.{key} needs at least {min_points} values (curve.min_points)")
    # The reference first, unless another trial is training it: then this trial's own curve
    # first, so that two trials in parallel keep both workers busy, and the reference after.
    reference = reference_curve(cfg, multirun, stop, wait=False)
    out = Path(str(cfg.paths.run_dir))
    curve = train_points(cfg, out, multirun, stop)
    if reference is None:
        reference = reference_curve(cfg, multirun, stop)
    result, front = score_curve(curve, reference, min_points)
    record: dict[str, Any] = {
        "curve": curve,
        "front": front,
        "reference": reference,
        "bd_rate": result.value,
    }
    (out / CURVE_FILE).write_text(json.dumps({**record, "note": result.note}, indent=1))
    if result.value is None:
        raise CurveError(f"no BD-rate against the reference: {result.note}")
    log.info("BD-rate against %s: %+.2f%% %s", cfg.curve.reference, result.value, result.note)
    return result.value
