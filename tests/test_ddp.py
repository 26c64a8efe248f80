"""Data-parallel training (issue 5, point 1): two gloo processes on the CPU via torchrun stay
identical (weights and Balanced task weights), rank 0 alone writes, resume is exact; plus the
single-process behaviour of the DDP options."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from hpcm.codec.checkpoint import CheckpointError, safe_torch_load
from hpcm.run_layout import read_metrics
from hpcm.train import validate as validate_module
from hpcm.train.build import ConfigError, build_trainer, setup_distributed
from hpcm.train.distributed import DistContext

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_worker.py"
# Two epochs of two steps per rank (4 samples, batch 1, 2 ranks); one test image per rank.
RUN = [
    "model=tiny",
    "optimizer=balanced",
    "logger=none",
    "trainer=ddp",
    "trainer.epochs=2",
    "trainer.progress_bar=false",
    "trainer.showcase=false",
    "trainer.channels_last=false",  # one memory format for DDP and FSDP (FSDP shards NCHW only)
    "trainer.save_every_n_epochs=1",
    "trainer.log_every_n_steps=1",
    "data.batch_size=1",
    "data.samples_per_epoch=4",
    "data.test_crop_size=256",
]


def torchrun(out: Path, *overrides: str, env: dict[str, str] | None = None) -> None:
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        str(out),
        *RUN,
        *overrides,
    ]
    done = subprocess.run(
        cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]


def ranks(out: Path) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def assert_same_state(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["famo"].items():
        assert torch.equal(value, b["famo"][key]), key


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-rank DDP run, shared by the DDP and FSDP tests."""
    full = tmp_path_factory.mktemp("ddp") / "full"
    torchrun(full)
    return full


@pytest.mark.slow
def test_two_ranks_stay_identical_rank_0_writes_and_resume_is_exact(
    tmp_path: Path, ddp_run: Path
) -> None:
    full = ddp_run
    zero, one = ranks(full)
    assert zero["ddp"] == one["ddp"] == "DistributedDataParallel"
    assert (zero["world_size"], zero["global_step"], one["global_step"]) == (2, 4, 4)
    assert (zero["sampler"], one["sampler"]) == ((2, 0), (2, 1))
    # Different images on the two ranks (their own losses differ) ...
    assert not torch.allclose(zero["first_local_losses"], one["first_local_losses"])
    # ... and yet bit-identical weights and task weights: gradients and task losses averaged.
    assert_same_state(zero, one)
    assert not torch.equal(zero["famo"]["logits"], torch.zeros(2))  # the weights did move
    assert zero["best"] == one["best"]  # validation sharded, then reduced on all ranks

    # Rank 1 was given its own run directory (as Hydra's timestamps may differ) and used rank
    # 0's: one directory holds everything, written once.
    assert not (full / "run1").exists()
    run = full / "run0"
    names = {p.name for p in run.iterdir()}
    assert {"last.pth.tar", "epoch_0.pth.tar", "epoch_1.pth.tar", "metrics.jsonl"} <= names
    records = read_metrics(run / "metrics.jsonl")
    train_steps = [r["step"] for r in records if "train/loss" in r]
    assert train_steps == [1, 2, 3, 4]  # not one line per rank
    last = safe_torch_load(run / "last.pth.tar")
    for key, value in zero["model"].items():
        assert torch.equal(last["state_dict"][key], value), key
    noise = last["rng_ranks"]
    assert len(noise) == 2 and not torch.equal(noise[0]["cpu"], noise[1]["cpu"])

    # Resume both ranks from the end of epoch 0 into a new directory: the same final state.
    resumed = tmp_path / "resumed"
    torchrun(resumed, f"resume={run / 'epoch_0.pth.tar'}")
    for a, b in zip(ranks(full), ranks(resumed), strict=True):
        assert_same_state(a, b)
    again = read_metrics(resumed / "run0" / "metrics.jsonl")
    assert again == [r for r in records if r["epoch"] == 1]


@pytest.mark.slow
def test_fsdp_two_ranks_match_ddp_and_resume_exactly(tmp_path: Path, ddp_run: Path) -> None:
    """trainer.fsdp (with activation checkpointing): weights and Adam moments sharded over two
    gloo ranks; the same run as DDP (gradients averaged either way, the transforms' blocks
    recomputed) and the same Balanced task weights on both ranks."""
    full = tmp_path / "fsdp"
    fsdp = ("trainer.fsdp=true", "trainer.activation_checkpointing=true")  # RUN has trainer=ddp
    torchrun(full, *fsdp)
    zero, one = ranks(full)
    ddp, _ = ranks(ddp_run)
    assert zero["ddp"] == "FSDPHPCM" and zero["global_step"] == 4
    assert_same_state(zero, one)  # the gathered weights and the FAMO state of both ranks
    for key, value in ddp["model"].items():  # summation order differs: float tolerance
        assert torch.allclose(zero["model"][key], value, rtol=1e-5, atol=1e-6), key
    assert torch.allclose(zero["famo"]["logits"], ddp["famo"]["logits"], atol=1e-6)
    last = safe_torch_load(full / "run0" / "last.pth.tar")  # whole weights, loadable alone
    for key, value in zero["model"].items():
        assert torch.equal(last["state_dict"][key], value), key
    resumed = tmp_path / "resumed"
    torchrun(resumed, *fsdp, f"resume={full / 'run0' / 'epoch_0.pth.tar'}")
    for a, b in zip(ranks(full), ranks(resumed), strict=True):
        assert_same_state(a, b)


@pytest.mark.slow
def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(tmp_path: Path) -> None:
    out = tmp_path / "stopped"
    torchrun(out, env={"HPCM_TEST_SIGINT": "1:3"})  # Ctrl-C on rank 1 in step 3 (epoch 1)
    zero, one = ranks(out)
    assert (zero["global_step"], one["global_step"]) == (3, 3)
    # Rank 1 stops with its SIGINT's status, rank 0, which got no signal, with SIGTERM's.
    assert (zero["exit_code"], one["exit_code"]) == (128 + signal.SIGTERM, 128 + signal.SIGINT)
    assert_same_state(zero, one)
    last = safe_torch_load(out / "run0" / "last.pth.tar")
    assert (last["epoch"], last["epoch_batches"], last["global_step"]) == (0, 1, 3)
    for key, value in zero["model"].items():
        assert torch.equal(last["state_dict"][key], value), key


def test_fsdp_config_errors(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fsdp=true needs trainer.ddp=true"):
        build_trainer(make_cfg(tmp_path, "trainer.fsdp=true"))
    with pytest.raises(ConfigError, match="channels_last=false"):
        build_trainer(make_cfg(tmp_path, "trainer=fsdp", "trainer.channels_last=true"))
    trainer = build_trainer(make_cfg(tmp_path))
    trainer.save(0, is_best=False, periodic=False)
    ckpt = safe_torch_load(tmp_path / "last.pth.tar")
    ckpt["fsdp"] = True  # as trainer=fsdp writes it: optimizer state keyed by name
    torch.save(ckpt, tmp_path / "fsdp.pth.tar")
    with pytest.raises(CheckpointError, match="written with trainer.fsdp=true: resume it with"):
        trainer.resume(tmp_path / "fsdp.pth.tar")


def test_ddp_without_torchrun_trains_in_one_process(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    cfg = make_cfg(tmp_path, "trainer=ddp", "optimizer=balanced")
    assert setup_distributed(cfg) == DistContext()
    assert "(not started by torchrun): training in one process" in caplog.text
    trainer = build_trainer(cfg)
    assert trainer.train_model is trainer.model and trainer.balancer.famo.reduce_fn is None
    assert trainer.train_step(next(iter(trainer.loaders.train))) is not None


def test_a_torchrun_launch_without_ddp_is_refused(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="WORLD_SIZE=2 but trainer.ddp=false: add trainer=ddp"):
        build_trainer(make_cfg(tmp_path))


def test_unsupported_ddp_settings_are_config_errors(make_cfg, tmp_path: Path) -> None:
    two = DistContext(rank=0, world_size=2)  # never reaches a collective: refused before
    with pytest.raises(ConfigError, match="QP balancer runs in one process"):
        build_trainer(make_cfg(tmp_path, "optimizer=balanced_qp"), dist=two)
    with pytest.raises(ConfigError, match="unknown trainer.ddp_backend 'mpi'"):
        setup_distributed(make_cfg(tmp_path, "trainer=ddp", "trainer.ddp_backend=mpi"))
    with pytest.raises(ConfigError, match="nccl needs CUDA"):
        setup_distributed(
            make_cfg(tmp_path, "trainer=ddp", "trainer.ddp_backend=nccl", "trainer.device=cpu")
        )


def test_each_rank_validates_its_share_of_the_test_images(make_cfg, tmp_path: Path) -> None:
    trainer = build_trainer(make_cfg(tmp_path))
    everything = torch.cat(list(trainer.loaders.test))
    shares = []
    for rank in (0, 1):
        share = validate_module._share(trainer.loaders.test, DistContext(rank=rank, world_size=2))
        shares.append(torch.cat(list(share)))
    assert torch.equal(torch.cat([shares[0], shares[1]]), everything[[0, 1]])
    assert torch.equal(shares[0], everything[0::2]) and torch.equal(shares[1], everything[1::2])


def test_one_process_context_needs_no_process_group() -> None:
    ctx = DistContext()
    assert ctx.is_main and not ctx.enabled
    flags = [torch.tensor(True), torch.tensor(False), True, False]  # no collective
    assert ctx.all_true(flags, torch.device("cpu")) == [True, False, True, False]
    value = torch.tensor([2.0, 4.0])
    assert ctx.all_reduce_mean(value) is value and value.tolist() == [2.0, 4.0]
    assert ctx.gather_objects("a") == ["a"] and ctx.broadcast_object(3) == 3
    seeds = {DistContext(rank=r, world_size=4).noise_seed(0) for r in range(4)}
    assert len(seeds) == 4  # a different noise stream per rank


def test_one_torchrun_process_with_ddp_really_wraps_the_model(
    make_cfg, tmp_path: Path, process_group_of_one: None
) -> None:
    # What benchmarks/gpu_check.sh runs with NCCL on a GPU: torchrun --nproc_per_node=1 and
    # trainer.ddp=true must train through DistributedDataParallel and the collectives.
    trainer = build_trainer(make_cfg(tmp_path, "trainer=ddp", "optimizer=balanced"))
    assert trainer.dist.enabled and trainer.dist.backend == "gloo"
    assert trainer.dist.world_size == 1
    assert isinstance(trainer.train_model, DistributedDataParallel)
    assert trainer.balancer.famo.reduce_fn == trainer.dist.all_reduce_mean
    assert trainer.train_step(next(iter(trainer.loaders.train))) is not None


def test_one_collective_per_step_carries_the_skip_and_the_stop(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, process_group_of_one: None
) -> None:
    """Under DDP a step agrees on its finiteness and on a stop request in one all_reduce (one
    host sync): a second per-step collective would fail here. A skipped step sees a stop too."""
    overrides = ("data.batch_size=1", "trainer.max_steps_per_epoch=3")  # 3 steps, no log
    trainer = build_trainer(make_cfg(tmp_path, "trainer=ddp", *overrides))
    reductions, all_reduce = [], torch.distributed.all_reduce

    def recording(tensor: torch.Tensor, op=torch.distributed.ReduceOp.SUM, *args, **kwargs):
        reductions.append((op, tensor.numel()))
        return all_reduce(tensor, op, *args, **kwargs)

    monkeypatch.setattr(torch.distributed, "all_reduce", recording)
    forward, steps = trainer.model.forward, []

    def nan_and_signal_in_step_2(x: torch.Tensor) -> dict:
        out = forward(x)
        steps.append(1)
        if len(steps) == 2:
            out["x_hat"] = out["x_hat"] * float("nan")
            trainer.stop.signum = signal.SIGINT  # what the handler sets
        return out

    monkeypatch.setattr(trainer.model, "forward", nan_and_signal_in_step_2)
    assert not trainer.train_epoch(0)  # stopped after step 2, not at the end of the epoch
    assert (trainer.progress.global_step, trainer.progress.skipped_batches) == (2, 1)
    assert trainer.stop.stopping and trainer.stop.signum == signal.SIGINT
    assert reductions == [(torch.distributed.ReduceOp.MIN, 2)] * 2  # [finite, go on] per step


def test_a_ddp_checkpoint_gathers_the_ranks_state_in_one_collective(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, process_group_of_one: None
) -> None:
    trainer = build_trainer(make_cfg(tmp_path, "trainer=ddp"))
    trainer.window.add(trainer.train_step(next(iter(trainer.loaders.train))))  # an open window
    gathered, all_gather_object = [], torch.distributed.all_gather_object

    def recording(out: list, obj: object, *args, **kwargs) -> None:
        gathered.append(obj)
        return all_gather_object(out, obj, *args, **kwargs)

    monkeypatch.setattr(torch.distributed, "all_gather_object", recording)
    trainer.save(0, is_best=False, periodic=False)
    assert len(gathered) == 1  # noise stream and logging window together
    last = safe_torch_load(tmp_path / "last.pth.tar")
    assert len(last["rng_ranks"]) == len(last["window_ranks"]) == 1
    assert torch.equal(last["rng_ranks"][0]["cpu"], last["rng"]["cpu"])
    assert torch.equal(last["window_ranks"][0]["sums"], last["window"]["sums"])
