"""Sweeps: the Optuna search of the Balanced R-D hyper-parameters (sqlite storage,
resume, failed and diverged trials), the lambda sweeps and the launcher configs. The runs go
through ``python train.py -m`` exactly as a user types it, in a working directory in tmp_path."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from hpcm.configs import CONF_DIR
from hpcm.eval import evaluate as evaluation
from hpcm.run_layout import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ["-m", "hparams_search=balanced_optuna", "lambda=0.013"]
STUDY = "balanced_tiny_mse_0.013"  # balanced_MODEL_METRIC_LAMBDA

pytestmark = pytest.mark.slow


def run_train(workdir: Path, *args: str, full_error: bool = True) -> tuple[int, str]:
    """``python train.py ARGS`` in ``workdir``: its exit status and output. ``full_error``:
    Hydra prints whole tracebacks (``HYDRA_FULL_ERROR=1``), else what a user sees."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=workdir,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def train(workdir: Path, *args: str) -> str:
    """``python train.py ARGS`` in ``workdir``, which must succeed; returns its output."""
    status, output = run_train(workdir, *args)
    assert status == 0, output[-4000:]
    return output


def sweep_dirs(parent: Path) -> list[Path]:
    """The DATE_TIME folders of a sweep, oldest first."""
    return sorted(p for p in parent.iterdir() if p.is_dir())


def run_result(run_dir: Path) -> tuple[dict, float]:
    """A run's resolved optimizer config and its best validation loss."""
    config = OmegaConf.load(run_dir / "config.yaml")
    losses = [r["test/loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "test/loss" in r]
    return OmegaConf.to_container(config.optimizer), min(losses)


def first_tpe_trial(seed: int) -> dict:
    """What ``TPESampler(seed)`` draws first for the search space of balanced_optuna.yaml."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    trial = study.ask()
    return {
        "optimizer.balancer.gamma": trial.suggest_float(
            "optimizer.balancer.gamma", 1e-4, 0.03, log=True
        ),
        "optimizer.balancer.w_lr": trial.suggest_float("optimizer.balancer.w_lr", 0.005, 0.1),
    }


def compose_sweep(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def expand(cfg: DictConfig) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches for the sweeper params of ``cfg``."""
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    parsed = OverridesParser.create().parse_overrides(params)
    (jobs,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return jobs


# -- Optuna search --------------------------------------------------------------------------------
def test_search_stores_its_study_in_sqlite_and_resumes(
    workdir: Path, folder_run: list[str]
) -> None:
    train(workdir, *SEARCH, *folder_run, "trainer.epochs=1", "hydra.sweeper.n_trials=2")
    storage = f"sqlite:///{workdir / 'optuna.db'}"  # the default: optuna.db where it runs
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    gamma = study.trials[0].distributions["optimizer.balancer.gamma"]
    assert isinstance(gamma, optuna.distributions.LogUniformDistribution)
    assert (gamma.low, gamma.high) == (1e-4, 0.03)
    assert study.trials[0].params == pytest.approx(first_tpe_trial(seed=0))  # seeded TPE

    # Each trial trained balanced with its own gamma and w_lr; its value is the run's best
    # validation loss, which train.py's main returned.
    (first,) = sweep_dirs(workdir / "multirun" / STUDY)
    for trial in study.trials:
        optimizer, best = run_result(first / f"{trial.number}_tiny_balanced_mse_0.013")
        assert optimizer["name"] == "balanced"
        assert optimizer["balancer"]["gamma"] == trial.params["optimizer.balancer.gamma"]
        assert optimizer["balancer"]["w_lr"] == trial.params["optimizer.balancer.w_lr"]
        assert trial.value == pytest.approx(best)
        # Every trial of the study in one wandb group, named after the study.
        config = OmegaConf.load(first / f"{trial.number}_tiny_balanced_mse_0.013" / "config.yaml")
        assert config.logger.group == STUDY
    assert OmegaConf.load(first / "optimization_results.yaml").best_value == study.best_value
    # The study plots of the callback in the sweep folder.
    assert (first / "optuna_history.png").is_file() and (first / "optuna_contour.png").is_file()

    # The same command again resumes the study with one more trial at a new point.
    train(workdir, *SEARCH, *folder_run, "trainer.epochs=1", "hydra.sweeper.n_trials=1")
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    resumed = study.trials[2].params
    assert all(resumed != t.params for t in study.trials[:2])  # not the seeded start replayed
    assert len(sweep_dirs(workdir / "multirun" / STUDY)) == 2  # its runs in a new folder


def test_failed_and_diverged_trials_are_recorded_and_the_search_goes_on(
    workdir: Path, folder_run: list[str]
) -> None:
    storage = f"sqlite:///{workdir / 'elsewhere.db'}"
    study = optuna.create_study(study_name="failing", storage=storage, direction="minimize")
    # Trial 0 diverges (NaN weights after one step), trial 1 raises (no epochs), trial 2 trains.
    for lr, epochs in ((1e30, 1), (1e-4, 0), (1e-4, 1)):
        study.enqueue_trial({"optimizer.lr": lr, "trainer.epochs": epochs})
    output = train(
        workdir,
        *SEARCH,
        *folder_run,
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=failing",
        "hydra.sweeper.n_trials=3",
        "optimizer.lr=0.0001,1e30",
        "trainer.epochs=0,1",
    )
    study = optuna.load_study(study_name="failing", storage=storage)
    fail, complete = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE
    assert [t.state for t in study.trials] == [fail, fail, complete]
    assert study.trials[0].params["optimizer.lr"] == 1e30
    assert "diverged: no validation gave a finite loss" in output
    assert "trainer.epochs must be >= 1, got 0" in output
    assert study.best_trial.number == 2
    assert not (workdir / "optuna.db").exists()  # the storage override was used


def test_a_search_where_no_trial_completes_ends_with_one_line(
    workdir: Path, folder_run: list[str]
) -> None:
    # Every trial fails its config check (no epochs) before it reads any data.
    args = [*SEARCH, *folder_run, "trainer.epochs=0", "hydra.sweeper.n_trials=2"]
    status, output = run_train(workdir, *args, full_error=False)
    assert status == 1, output[-4000:]
    assert "Record does not exist" not in output and "Traceback" not in output
    assert output.count("Failed experiment: trainer.epochs must be >= 1, got 0") == 2
    (sweep,) = sweep_dirs(workdir / "multirun" / STUDY)
    assert (
        f"\nno trial completed: study {STUDY} holds 2 failed trial(s) and no result; each "
        f"failure's error is logged above ('Failed experiment') and in multirun/{STUDY}/"
        f"{sweep.name}\n"
    ) in output, output[-4000:]
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{workdir / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2


def running_trials(db: Path) -> int:
    if not db.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
        try:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is still being created
            return 0


def test_a_search_killed_in_a_trial_continues_with_the_same_command(
    workdir: Path, folder_run: list[str]
) -> None:
    command = [*SEARCH, *folder_run, "trainer.epochs=2", "hydra.sweeper.n_trials=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *command],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not running_trials(workdir / "optuna.db"):  # killed while its trial trains
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    output = train(workdir, *command)  # the same command
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{workdir / 'optuna.db'}")
    fail, complete = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE
    assert [t.state for t in study.trials] == [fail, complete]
    assert "trial(s) 0 were left running by a command that stopped: marked FAIL" in output


# -- lambda sweeps --------------------------------------------------------------------------------
@pytest.mark.parametrize("sweep, metric", [("lambdas_mse", "mse"), ("lambdas_msssim", "ms-ssim")])
def test_lambda_sweep_trains_every_lambda_with_both_optimizers(sweep: str, metric: str) -> None:
    cfg = compose_sweep(f"sweep={sweep}")
    assert cfg.hydra.mode == RunMode.MULTIRUN  # `-m` may be left out
    jobs = expand(cfg)
    assert len(jobs) == 12
    runs = set()
    for job in jobs:
        job_cfg = compose_sweep(f"sweep={sweep}", *job)
        runs.add((job_cfg.metric, job_cfg.lmbda, job_cfg.optimizer.name))
    presets = [OmegaConf.load(p) for p in sorted((CONF_DIR / "lambda").glob("*.yaml"))]
    lambdas = {p.lmbda for p in presets if p.metric == metric}
    assert len(lambdas) == 6
    assert runs == {(metric, lmbda, opt) for lmbda in lambdas for opt in ("adam", "balanced")}


def test_lambda_sweep_writes_runs_that_evaluate_reads(workdir: Path, folder_run: list[str]) -> None:
    # `lambda=0.013` on the command line narrows the sweep to one lambda: two runs.
    # trainer.showcase left at its default: off in a multirun.
    default_showcase = [
        a for a in [*folder_run, "trainer.epochs=1"] if not a.startswith("trainer.showcase=")
    ]
    train(workdir, "-m", "sweep=lambdas_mse", "lambda=0.013", *default_showcase)
    (sweep,) = sweep_dirs(workdir / "multirun" / "lambdas_mse_tiny")
    assert not list(sweep.rglob("showcase.png")) and not list(sweep.rglob("rd_vs_jpeg.png"))
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        "0_tiny_adam_mse_0.013",
        "1_tiny_balanced_mse_0.013",
    ]
    # Both runs of the command share one wandb group: the sweep's folder.
    runs = [run for run in sweep.iterdir() if run.is_dir()]
    groups = {OmegaConf.load(run / "config.yaml").logger.group for run in runs}
    assert groups == {f"multirun/lambdas_mse_tiny/{sweep.name}"}
    out = workdir / "eval"
    args = [str(sweep), "--dataset", str(workdir / "data" / "test"), "--out", str(out)]
    assert evaluation.main([*args, "--entropy-estimation", "--device", "cpu"]) == 0
    for group in ("adam", "balanced"):
        curve = json.loads((out / f"{group}.json").read_text())
        assert curve["lambda"] == [0.013]
        assert len(curve["results"]["bpp"]) == 1


# -- launchers ------------------------------------------------------------------------------------
def test_search_config_composes_with_the_joblib_launcher() -> None:
    cfg = compose_sweep("hparams_search=balanced_optuna", "hydra/launcher=joblib")
    assert cfg.optimizer.name == "balanced"
    assert cfg.hydra.sweeper.study_name == "balanced_tiny_mse_0.013"
    assert cfg.hydra.sweeper.storage == "sqlite:///optuna.db"
    assert cfg.hydra.sweeper.sampler._target_ == "hpcm.train.sweep.ResumableTPESampler"
    # Optuna's sweeper with the one-line end of a study without a completed trial.
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.hpcm_sweeper.OptunaSearchSweeper"
    assert cfg.hydra.sweeper.max_failure_rate == 1.0  # the plugin's keys, ours set
    assert get_class(cfg.hydra.launcher._target_).__name__ == "JoblibLauncher"
    # Another sampler replaces the resumable TPE entirely.
    cfg = compose_sweep("hparams_search=balanced_optuna", "hydra/sweeper/sampler=random")
    assert cfg.hydra.sweeper.sampler._target_ == "optuna.samplers.RandomSampler"


def test_slurm_launcher_config_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")  # the optional extra `slurm`
    for sweep in ("hparams_search=balanced_optuna", "sweep=lambdas_mse"):
        cfg = compose_sweep(sweep, "model=hpcm_base", "hydra/launcher=slurm")
        launcher = cfg.hydra.launcher
        assert get_class(launcher._target_).__name__ == "SlurmLauncher"
        assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 1)
        assert launcher.timeout_min > 0


def test_bdrate_search_scores_curves_against_one_cached_reference(
    workdir: Path, folder_run: list[str]
) -> None:
    args = ["-m", "hparams_search=balanced_bdrate", *folder_run, "trainer.epochs=1"]
    args += ["curve.lambdas=[0.0002,0.002,0.02,0.2]", "hydra.sweeper.n_trials=2"]
    args += ["curve.reference_lambdas=[0.0001,0.001,0.013,0.1]"]
    # One step of training from random weights need not give a curve whose quality rises with
    # rate, so any trial may fail; a study with no completed trial ends in one line, status 1.
    status, output = run_train(workdir, *args)
    assert output.count("training it once") == 1  # the second trial reads the cache
    (folder,) = (workdir / "reference_curves").iterdir()
    reference = json.loads((folder / "curve.json").read_text())
    assert sorted(reference["lambda"]) == [0.0001, 0.001, 0.013, 0.1]
    assert len(list(folder.glob("lambda_*"))) == 4
    study = optuna.load_study(
        study_name="balanced_bdrate_tiny_mse", storage=f"sqlite:///{workdir / 'optuna.db'}"
    )
    assert len(study.trials) == 2
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert status == (0 if completed else 1), output[-4000:]
    if not completed:
        assert "no trial completed: study balanced_bdrate_tiny_mse holds 2 failed" in output
    (sweep,) = (workdir / "multirun" / "balanced_bdrate_tiny_mse").iterdir()
    trials = sorted(p for p in sweep.iterdir() if (p / "curve.json").is_file())
    assert len(trials) == 2
    for trial, record in zip(study.trials, trials, strict=True):
        scored = json.loads((record / "curve.json").read_text())
        assert scored["reference"] == reference
        assert sorted(scored["curve"]["lambda"]) == [0.0002, 0.002, 0.02, 0.2]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(scored["bd_rate"])
        else:  # one step of training need not give a curve whose quality rises with rate
            assert scored["bd_rate"] is None and scored["note"].startswith("n/a")
