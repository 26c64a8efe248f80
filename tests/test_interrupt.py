"""Interrupted jobs lose nothing: SIGTERM/SIGINT mid-epoch, resume=auto, crashed checkpoint
writes, finished runs skipped on a re-launch."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hpcm.codec.checkpoint import atomic_torch_save, safe_torch_load
from hpcm.run_layout import FINISHED, read_metrics
from hpcm.train import loop as engine
from hpcm.train.build import train
from hpcm.train.data import SeededSampler
from hpcm.train.interrupt import (
    STOP_FILE,
    StopRequest,
    SweepSignals,
    TrainingInterrupted,
    read_stop_file,
)

ROOT = Path(__file__).resolve().parents[1]

# 3 steps per epoch, a logging window that is open when the signal comes (step 5). Adam: the
# balancers' states resume exactly too (test_train.py::test_resume_gives_bit_identical_weights).
RUN = [
    "trainer.epochs=2",
    "trainer.max_steps_per_epoch=3",
    "data.batch_size=1",
    "data.samples_per_epoch=3",
    "trainer.log_every_n_steps=2",
]


def signal_during_step(monkeypatch: pytest.MonkeyPatch, step: int, signum: int) -> None:
    """Send ``signum`` to this process while step number ``step`` (1-based) runs."""
    original, calls = engine.Trainer.train_step, []

    def step_with_signal(self, x):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return original(self, x)

    monkeypatch.setattr(engine.Trainer, "train_step", step_with_signal)


def assert_same_state(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for i, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][i][key]), (i, key)
    assert torch.equal(a["rng"]["cpu"], b["rng"]["cpu"])


def test_sigterm_mid_epoch_saves_and_the_same_command_continues_exactly(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(make_cfg(full, *RUN))
    with monkeypatch.context() as patch:
        signal_during_step(patch, 5, signal.SIGTERM)  # epoch 1, its second batch
        with pytest.raises(TrainingInterrupted) as info:
            train(make_cfg(cut, *RUN, "resume=auto"))
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at step 5 (epoch 1, batch 2)" in str(info.value)
    saved = safe_torch_load(cut / "last.pth.tar")
    assert (saved["epoch"], saved["epoch_batches"], saved["global_step"]) == (0, 2, 5)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers removed again

    with caplog.at_level(logging.INFO):
        train(make_cfg(cut, *RUN, "resume=auto"))  # the same command
    assert "resume=auto: continuing from" in caplog.text
    assert "2 batches of epoch 1" in caplog.text
    assert_same_state(safe_torch_load(full / "last.pth.tar"), safe_torch_load(cut / "last.pth.tar"))
    # The metrics file holds each record once, the open window's mean included.
    assert read_metrics(full / "metrics.jsonl") == read_metrics(cut / "metrics.jsonl")


def test_sigint_at_the_end_of_an_epoch_keeps_the_epoch_checkpoint(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        signal_during_step(patch, 3, signal.SIGINT)  # the last step of epoch 0
        with pytest.raises(TrainingInterrupted) as info:
            train(make_cfg(tmp_path, *RUN))
    assert info.value.exit_code == 130
    saved = safe_torch_load(tmp_path / "last.pth.tar")
    assert (saved["epoch"], saved["epoch_batches"]) == (-1, 3)  # epoch 0: every batch, no test
    train(make_cfg(tmp_path, *RUN, "resume=true"))
    saved = safe_torch_load(tmp_path / "last.pth.tar")
    assert (saved["epoch"], saved["epoch_batches"], saved["global_step"]) == (1, 0, 6)


def test_resume_auto_starts_fresh_then_skips_a_finished_run(
    make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        first = train(make_cfg(tmp_path, "resume=auto"))  # killed before any checkpoint: fresh
    assert "resume=auto: no" in caplog.text and "starting a fresh run" in caplog.text
    caplog.clear()
    before = (tmp_path / "last.pth.tar").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert train(make_cfg(tmp_path, "resume=auto")) == first
    assert "finished all its epochs already: skipped" in caplog.text
    assert "continuing from" not in caplog.text
    assert (tmp_path / "last.pth.tar").stat().st_mtime_ns == before
    train(make_cfg(tmp_path, "resume=auto", "trainer.epochs=2"))  # more epochs: continues
    assert safe_torch_load(tmp_path / "last.pth.tar")["epoch"] == 1


def test_a_failed_checkpoint_write_leaves_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pth.tar"
    atomic_torch_save({"epoch": 1}, path)

    def no_rename(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr("hpcm.codec.checkpoint.os.replace", no_rename)
    with pytest.raises(OSError, match="disk gone"):
        atomic_torch_save({"epoch": 2}, path)
    assert safe_torch_load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth.tar"]  # no temporary left


def test_a_kill_between_write_and_rename_leaves_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "last.pth.tar"
    atomic_torch_save({"epoch": 1}, path)
    child = (
        "import os, signal, sys\n"
        "import hpcm.codec.checkpoint as c\n"
        "c.os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)\n"
        "c.atomic_torch_save({'epoch': 2}, sys.argv[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", child, str(path)], check=False, timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert safe_torch_load(path) == {"epoch": 1}
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".last.pth.tar.")


def test_a_resumed_epoch_skips_the_keys_it_did() -> None:
    sampler = SeededSampler(10, seed=3, num_replicas=2, rank=1)
    sampler.set_epoch(4)
    keys = list(sampler)
    sampler.set_epoch(4, skip=3)
    assert list(sampler) == keys[3:]
    assert list(sampler) != keys  # the skip is for one epoch only


def test_sigterm_through_the_command_line_exits_143_with_a_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [sys.executable, str(ROOT / "train.py"), "model=tiny", "logger=none",
            "trainer.epochs=1000", "trainer.log_every_n_steps=1", "trainer.progress_bar=false",
            "data.batch_size=1", "data.samples_per_epoch=4", "data.test_crop_size=256",
            f"hydra.run.dir={run}", "resume=auto"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 180
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:]
    assert "stopped by SIGTERM" in out and "Traceback" not in out
    saved = safe_torch_load(run / "last.pth.tar")
    assert saved["global_step"] >= 1


def test_sigterm_in_the_last_validation_ends_the_run_saved_and_the_same_command_finishes_it(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = engine.Trainer.validate

    def validate_with_signal(self):
        os.kill(os.getpid(), signal.SIGTERM)  # during the last epoch's validation
        return original(self)

    with monkeypatch.context() as patch:
        patch.setattr(engine.Trainer, "validate", validate_with_signal)
        with pytest.raises(TrainingInterrupted) as info:
            train(make_cfg(tmp_path, *RUN, "trainer.val_every_n_epochs=2", "resume=auto"))
    assert info.value.exit_code == 143
    saved = safe_torch_load(tmp_path / "last.pth.tar")
    assert (saved["epoch"], saved["epoch_batches"], saved["global_step"]) == (1, 0, 6)
    assert (tmp_path / "epoch_best.pth.tar").is_file()  # the validation itself was kept
    assert not (tmp_path / FINISHED).exists()  # not finished: the end-of-run steps did not run

    best = train(make_cfg(tmp_path, *RUN, "trainer.val_every_n_epochs=2", "resume=auto"))
    assert (tmp_path / FINISHED).is_file() and math.isfinite(best)
    assert safe_torch_load(tmp_path / "last.pth.tar")["global_step"] == 6  # nothing retrained


# A sweep of three tiny runs, two at a time in joblib's worker processes; each run is 12 steps
# and 6 validations, long enough to be signalled while both of the first two train.
SWEEP = ["-m", "model=tiny", "logger=none", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "lmbda=0.001,0.002,0.003", "trainer.epochs=6", "trainer.max_steps_per_epoch=2",
         "trainer.num_threads=1", "trainer.progress_bar=false", "trainer.showcase=false",
         "trainer.log_every_n_steps=1",
         "data.batch_size=1", "data.samples_per_epoch=2", "data.test_crop_size=256"]  # fmt: skip


def logged_a_step(run: Path) -> bool:
    metrics = run / "metrics.jsonl"
    return metrics.is_file() and metrics.stat().st_size > 0


@pytest.mark.slow
def test_sigterm_to_a_joblib_sweep_saves_its_running_jobs_and_starts_no_other(
    tmp_path: Path,
) -> None:
    sweep = tmp_path / "sweep"
    args = [sys.executable, str(ROOT / "train.py"), *SWEEP, f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Its own process group, which gets the signal as a terminal's Ctrl-C or SLURM's would.
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    first_two = [sweep / f"{n}_tiny_adam_mse_{lmbda}" for n, lmbda in ((0, 0.001), (1, 0.002))]
    deadline = time.monotonic() + 300
    try:
        while not all(logged_a_step(run) for run in first_two):  # both train
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    assert out.rstrip().endswith("sweep stopped by SIGTERM: the same command continues it")
    for run in first_two:
        assert "stopped by SIGTERM at step" in (run / "train.log").read_text(), out[-3000:]
        assert not (run / FINISHED).exists()
        # 12: the signal came in the last epoch's validation or save (an idle machine can get
        # there first), which leaves the run saved and unfinished, as any other step does
        assert safe_torch_load(run / "last.pth.tar")["global_step"] <= 12
    third = sweep / "2_tiny_adam_mse_0.003"
    assert not (third / "last.pth.tar").exists() and not (third / "metrics.jsonl").exists()
    assert "not started: the sweep was stopped by SIGTERM" in (third / "train.log").read_text()

    done = subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (sweep / "STOP").exists()
    for run in [*first_two, third]:
        assert safe_torch_load(run / "last.pth.tar")["global_step"] == 12
        assert (run / FINISHED).is_file()
    for run in first_two:
        assert "resume=auto: continuing from" in (run / "train.log").read_text()


def test_a_job_in_the_sweeps_own_process_passes_the_signal_on_to_the_sweep(
    tmp_path: Path,
) -> None:
    # The basic launcher runs its jobs in the sweep's process: the job's handler, installed over
    # the sweep's, must still stop the sweep (the STOP file that keeps the next job from starting).
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    sweep = SweepSignals()
    try:
        sweep.on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
        assert SweepSignals.in_this_process() and SweepSignals.received is None
        job = StopRequest(tmp_path / STOP_FILE)
        with job.installed():
            assert job.go_on()
            os.kill(os.getpid(), signal.SIGTERM)
            assert not job.go_on() and job.signum == signal.SIGTERM
        assert SweepSignals.received == signal.SIGTERM
        assert read_stop_file(tmp_path / STOP_FILE) == signal.SIGTERM
        other_job = StopRequest(tmp_path / STOP_FILE)  # e.g. in a joblib worker: sees the file
        assert not other_job.go_on() and other_job.signum == signal.SIGTERM
        sweep.on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
        assert not (tmp_path / STOP_FILE).exists()  # the next command continues
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        SweepSignals.received = SweepSignals.owner_pid = None
