"""hparams_search=balanced_bdrate: the reference config of a trial's curve (the whole search runs
in tests/test_sweep.py, with the other sweeps)."""

from __future__ import annotations

import fcntl
import json
import threading
from pathlib import Path

import pytest

from hpcm.eval.report import pareto_front
from hpcm.train import curve_search
from hpcm.train.curve_search import (
    CurveError,
    reference_config,
    reference_curve,
    reference_key,
    train_curve,
)


def test_the_reference_is_the_shipped_optimizer_group_with_its_base(make_cfg) -> None:
    trial = make_cfg(None, "hparams_search=balanced_bdrate", "optimizer.max_scale=3.0")
    ref = reference_config(trial)
    assert (ref.optimizer.name, ref.optimizer.base._target_) == ("adam", "torch.optim.Adam")
    assert ref.optimizer.base.lr == ref.optimizer.lr == 2e-3 and ref.optimizer.max_scale is None
    assert ref.model == trial.model  # the rest is the trial's
    # The reference trains at its own, wider lambdas; the trial's curve is left as it was.
    assert ref.curve.lambdas == trial.curve.reference_lambdas != trial.curve.lambdas
    assert min(ref.curve.lambdas) < min(trial.curve.lambdas)
    trial.curve.reference_lambdas = None  # null: the reference trains at the trial's lambdas
    assert reference_config(trial).curve.lambdas == trial.curve.lambdas
    assert trial.optimizer.base._target_ == "hpcm.optim.CautiousAdam"  # left as it was
    trial.curve.reference_lr = 5e-4  # its own learning rate, the base optimizer's too
    assert reference_config(trial).optimizer.base.lr == 5e-4 != trial.optimizer.lr
    trial.curve.reference = "balanced"
    assert reference_config(trial).optimizer.base.max_scale == 10.0  # as shipped, not 3.0
    trial.curve.reference = "sgd"
    with pytest.raises(CurveError, match="no optimizer config 'sgd'"):
        reference_config(trial)


def test_the_reference_cache_key_holds_what_defines_the_runs(make_cfg, tmp_path) -> None:
    def key(*overrides: str) -> str:
        return reference_key(
            reference_config(make_cfg(None, "hparams_search=balanced_bdrate", *overrides))
        )

    same = key()
    # Where the runs write and report, and the trial's own optimizer, leave the reference alone.
    assert key(f"paths.run_dir={tmp_path}", "logger=wandb", "optimizer.balancer.gamma=0.02") == same
    assert key("seed=1") != same  # another seed is another reference
    # Lambdas are not in the key: the runs of one key differ by their lambda alone, each in its
    # own folder, so a reference extended by more lambdas keeps the runs it has.
    assert key("curve.reference_lambdas=[0.001,0.002,0.004,0.008]") == same
    assert key("curve.reference_lambdas=null", "curve.lambdas=[0.001,0.002,0.004,0.008]") == same
    assert key("trainer.max_steps_per_epoch=3") != same
    assert key("curve.reference=balanced") != same
    assert key("curve.reference_lr=1e-3") != same


def test_a_trial_waits_for_the_reference_another_trial_is_training(make_cfg, tmp_path) -> None:
    cache = tmp_path / "cache"
    cfg = make_cfg(tmp_path / "run", "hparams_search=balanced_bdrate", f"curve.cache_dir={cache}")
    folder = cache / reference_key(reference_config(cfg))
    folder.mkdir(parents=True)
    lambdas = list(reference_config(cfg).curve.lambdas)
    trained = {"bpp": [0.1, 0.2, 0.3, 0.4], "psnr": [20.0, 21, 22, 23], "lambda": lambdas}
    got: dict = {}
    with (folder / ".lock").open("w") as other_trial:  # another trial is training it
        fcntl.flock(other_trial, fcntl.LOCK_EX)
        waiting = threading.Thread(target=lambda: got.update(reference_curve(cfg, True)))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not got  # it waits, training nothing
        (folder / "curve.json").write_text(json.dumps(trained))
    waiting.join(timeout=60)
    assert got == trained  # the other trial's curve, read once the lock is released
    assert not list(folder.glob("lambda_*"))


def test_a_trial_trains_its_own_curve_while_another_trains_the_reference(
    make_cfg, tmp_path, monkeypatch
) -> None:
    cache = tmp_path / "cache"
    cfg = make_cfg(tmp_path / "run", "hparams_search=balanced_bdrate", f"curve.cache_dir={cache}")
    folder = cache / reference_key(reference_config(cfg))
    folder.mkdir(parents=True)
    lambdas = list(reference_config(cfg).curve.lambdas)
    reference = {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr": [20.0, 21, 22, 23], "lambda": lambdas}
    trial = {"bpp": [0.09, 0.18, 0.36, 0.72], "psnr": [20.0, 21, 22, 23], "lambda": [1, 2, 3, 4]}
    trained: list[Path] = []  # the folders train_points was asked to fill, in order

    def fake_points(point_cfg, out, multirun, stop=None):
        trained.append(out)
        out.mkdir(parents=True, exist_ok=True)
        return reference if out == folder else trial

    monkeypatch.setattr(curve_search, "train_points", fake_points)
    with (folder / ".lock").open("w") as other_trial:  # another trial is training it
        fcntl.flock(other_trial, fcntl.LOCK_EX)
        assert reference_curve(cfg, True, wait=False) is None  # no waiting asked: at once
        got: list[float] = []
        trial_thread = threading.Thread(target=lambda: got.append(train_curve(cfg, True)))
        trial_thread.start()
        trial_thread.join(timeout=1.0)
        # it trained its own curve and now waits for the reference
        assert trained == [tmp_path / "run"] and trial_thread.is_alive() and not got
        (folder / "curve.json").write_text(json.dumps(reference))
    trial_thread.join(timeout=60)
    assert got == [pytest.approx(-10.0)]  # 10% less rate at every quality
    # with no other trial at it, the reference is trained first, then the trial's curve
    (folder / "curve.json").unlink()
    trained.clear()
    assert train_curve(cfg, True) == pytest.approx(-10.0)
    assert trained == [folder, tmp_path / "run"]


def test_a_reference_extended_by_more_lambdas_keeps_its_runs(
    make_cfg, tmp_path, monkeypatch
) -> None:
    cache = tmp_path / "cache"
    cfg = make_cfg(tmp_path / "run", "hparams_search=balanced_bdrate", f"curve.cache_dir={cache}")
    calls: list[tuple[list[float], str]] = []  # (lambdas, resume mode) of each training

    def fake_points(point_cfg, out, multirun, stop=None):
        lambdas = [float(v) for v in point_cfg.curve.lambdas]
        calls.append((lambdas, point_cfg.resume))
        return {"bpp": [0.1 * (i + 1) for i in range(len(lambdas))],
                "psnr": [20.0 + i for i in range(len(lambdas))], "lambda": lambdas}  # fmt: skip

    monkeypatch.setattr(curve_search, "train_points", fake_points)
    four = reference_curve(cfg, True)
    assert reference_curve(cfg, True) == four and len(calls) == 1  # cached
    six = [*calls[0][0], 0.5, 1.0]
    cfg.curve.reference_lambdas = six
    extended = reference_curve(cfg, True)
    # The same folder, so the four finished runs are there; the curve of four is not taken for
    # the curve of six, and the runs resume (finished ones are read, not trained again).
    assert (cache / reference_key(reference_config(cfg))).is_dir()
    assert len(list(cache.iterdir())) == 1
    assert calls[1] == (six, "auto") and extended["lambda"] == six
    assert reference_curve(cfg, True) == extended and len(calls) == 2


def test_the_cpu_study_searches_in_the_factorials_regime(make_cfg) -> None:
    trial = make_cfg(None, "experiment=balanced_bdrate_cpu", short=False)
    assert (trial.model.name, trial.optimizer.name, trial.seed) == ("tiny", "balanced", 100)
    grid = trial.factorial
    assert trial.optimizer.lr == grid.lr.balanced and list(trial.curve.lambdas) == list(
        grid.lambdas.famo
    )
    ref = reference_config(trial)
    assert (ref.optimizer.name, ref.optimizer.lr) == ("adam", grid.lr.adam)
    ref_lambdas = list(ref.curve.lambdas)  # the fixed grid, and above it FAMO's highest rates
    assert ref_lambdas[:4] == list(grid.lambdas.fixed) and ref_lambdas == sorted(ref_lambdas)
    assert len(ref_lambdas) == 6 and trial.curve.min_points == 2
    assert trial.trainer.max_steps_per_epoch * trial.trainer.epochs == 600


def test_a_curve_is_scored_by_its_pareto_front(make_cfg, tmp_path, monkeypatch) -> None:
    # A point of more rate and no more quality than another is dropped, in the trial's curve and
    # in the reference's; two points left are scored (pchip), one is not.
    curve = {"bpp": [0.3, 0.1, 0.2, 0.25], "psnr": [23.0, 20.0, 21.0, 20.9], "lambda": [4, 1, 2, 3]}
    assert pareto_front(curve) == {
        "bpp": [0.1, 0.2, 0.3],
        "psnr": [20.0, 21.0, 23.0],
        "lambda": [1, 2, 4],
    }
    ties = {"bpp": [0.1, 0.1, 0.2], "psnr": [20.0, 20.5, 20.5], "lambda": [1, 2, 3]}
    assert pareto_front(ties) == {"bpp": [0.1], "psnr": [20.5], "lambda": [2]}

    cache = tmp_path / "cache"
    lambdas = [1e-4, 2e-4, 4e-4, 8e-4, 9e-4]
    cfg = make_cfg(
        tmp_path / "run",
        "hparams_search=balanced_bdrate",
        f"curve.cache_dir={cache}",
        f"curve.reference_lambdas=[{','.join(map(str, lambdas))}]",
    )
    folder = cache / reference_key(reference_config(cfg))
    reference = {"bpp": [0.1, 0.2, 0.4, 0.8, 0.9], "psnr": [20.0, 21, 22, 23, 22.5]}
    reference["lambda"] = lambdas
    # 10% less rate than the reference at 20 to 23 dB; 21.9 dB at 0.37 bpp is dominated
    trial = {"bpp": [0.09, 0.18, 0.37, 0.36, 0.72], "psnr": [20.0, 21, 21.9, 22, 23]}

    def fake_points(point_cfg, out, multirun, stop=None):
        out.mkdir(parents=True, exist_ok=True)
        return reference if out == folder else trial

    monkeypatch.setattr(curve_search, "train_points", fake_points)
    assert train_curve(cfg, True) == pytest.approx(-10.0)
    record = json.loads((tmp_path / "run" / "curve.json").read_text())
    assert record["front"]["bpp"] == [0.09, 0.18, 0.36, 0.72] and record["curve"] == trial
    assert record["bd_rate"] == pytest.approx(-10.0)
    # one point on its front: the lowest rate has the highest quality
    trial = {"bpp": [0.09, 0.18, 0.37, 0.36], "psnr": [22.0, 21, 21.9, 20]}
    with pytest.raises(CurveError, match="needs >= 2 points per curve"):
        train_curve(cfg, True)
    cfg.curve.min_points = None  # without the key: the report's 4 points
    trial = {"bpp": [0.09, 0.18, 0.37, 0.36], "psnr": [20.0, 21, 21.9, 22]}
    with pytest.raises(CurveError, match="needs >= 4 points per curve"):
        train_curve(cfg, True)
