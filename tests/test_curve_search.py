"""hparams_search=balanced_bdrate: a trial trains a short lambda curve and scores it by its
BD-rate against a reference curve trained once and cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from hpcm.train.curve_search import CurveError, reference_config

ROOT = Path(__file__).resolve().parents[1]


def search(cwd: Path, *args: str) -> str:
    """``python train.py ARGS``; one step of training from random weights need not give a curve
    whose quality rises with rate, so every trial may fail, and then Optuna's sweeper ends with
    "Record does not exist" (it asks for the best trial); anything else is an error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 or "Record does not exist" in output, output[-4000:]
    return output


def test_the_reference_is_the_shipped_optimizer_group_with_its_base(make_cfg) -> None:
    trial = make_cfg(None, "hparams_search=balanced_bdrate", "optimizer.max_scale=3.0")
    ref = reference_config(trial)
    assert (ref.optimizer.name, ref.optimizer.base._target_) == ("adam", "torch.optim.Adam")
    assert ref.optimizer.base.lr == ref.optimizer.lr == 2e-3 and ref.optimizer.max_scale is None
    assert ref.model == trial.model and ref.curve == trial.curve  # the rest is the trial's
    assert trial.optimizer.base._target_ == "hpcm.optim.CautiousAdam"  # left as it was
    trial.curve.reference = "balanced"
    assert reference_config(trial).optimizer.base.max_scale == 10.0  # as shipped, not 3.0
    trial.curve.reference = "sgd"
    with pytest.raises(CurveError, match="no optimizer config 'sgd'"):
        reference_config(trial)


@pytest.mark.slow
def test_bdrate_search_scores_curves_against_one_cached_reference(
    workdir: Path, folder_run: list[str]
) -> None:
    args = ["-m", "hparams_search=balanced_bdrate", *folder_run, "trainer.epochs=1"]
    args += ["curve.lambdas=[0.0001,0.001,0.013,0.1]", "hydra.sweeper.n_trials=2"]
    output = search(workdir, *args)
    assert output.count("training it once") == 1  # the second trial reads the cache
    (folder,) = (workdir / "reference_curves").iterdir()
    reference = json.loads((folder / "curve.json").read_text())
    assert sorted(reference["lambda"]) == [0.0001, 0.001, 0.013, 0.1]
    assert len(list(folder.glob("lambda_*"))) == 4
    study = optuna.load_study(
        study_name="balanced_bdrate_tiny_mse", storage=f"sqlite:///{workdir / 'optuna.db'}"
    )
    assert len(study.trials) == 2
    (sweep,) = (workdir / "multirun" / "balanced_bdrate_tiny_mse").iterdir()
    trials = sorted(p for p in sweep.iterdir() if (p / "curve.json").is_file())
    assert len(trials) == 2
    for trial, record in zip(study.trials, trials, strict=True):
        scored = json.loads((record / "curve.json").read_text())
        assert scored["reference"] == reference and len(scored["curve"]["bpp"]) == 4
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(scored["bd_rate"])
        else:  # one step of training need not give a curve whose quality rises with rate
            assert scored["bd_rate"] is None and scored["note"].startswith("n/a")
    # Another seed is another reference (the cache key holds all that defines the runs).
    search(workdir, *args[:-1], "hydra.sweeper.n_trials=1", "seed=1")
    assert len(list((workdir / "reference_curves").iterdir())) == 2
