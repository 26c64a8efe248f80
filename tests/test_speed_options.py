"""Speed options of the training step: ``trainer.channels_last``,
``trainer.compile`` and ``trainer.autocast_bf16`` (CUDA only; refused on the CPU). Their effect
on step time is measured on a GPU by benchmarks/gpu_check.sh."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import hpcm
from hpcm.metrics import bpp_from_likelihoods
from hpcm.train.build import ConfigError, build_trainer
from hpcm.train.data import to_float
from hpcm.train.speed import SpeedOptions, channels_last_for

sys.path.insert(0, str(Path(__file__).parent))


def speed_options(make_cfg, **changes) -> SpeedOptions:
    """The default run's speed options (trainer/default.yaml) with ``changes``."""
    return replace(SpeedOptions.from_config(make_cfg(None).trainer), **changes)


def test_bf16_autocast_is_refused_on_the_cpu(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "trainer.autocast_bf16=true", "trainer.device=cpu")
    with pytest.raises(ConfigError, match="autocast_bf16=true needs a CUDA device"):
        build_trainer(cfg)


def test_unknown_compile_mode_is_a_config_error(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown trainer.compile_mode 'fastest'"):
        build_trainer(make_cfg(tmp_path, "trainer.compile_mode=fastest"))


def test_channels_last_trains_and_computes_the_same_model(make_cfg, tmp_path: Path) -> None:
    plain = build_trainer(
        make_cfg(tmp_path / "a", "optimizer=balanced", "trainer.channels_last=false")
    )
    nhwc = build_trainer(
        make_cfg(tmp_path / "b", "optimizer=balanced", "trainer.channels_last=true")
    )
    for name, weight in nhwc.model.named_parameters():  # one policy: transforms, entropy path
        if weight.dim() == 4 and weight.shape[1] > 1 and weight.shape[-1] > 1:
            assert weight.is_contiguous(memory_format=torch.channels_last), name
            assert not weight.is_contiguous(), name
            assert plain.model.get_parameter(name).is_contiguous(), name
    x = to_float(next(iter(plain.loaders.train)))
    seen = []
    forward = nhwc.model.forward
    nhwc.model.forward = lambda batch: seen.append(batch) or forward(batch)
    for trainer in (plain, nhwc):  # deterministic (rounding) forward: the same numbers
        trainer.model.eval()
    with torch.no_grad():
        a, b = plain.model(x), nhwc.model(nhwc.speed.batch(x, nhwc.device))
    torch.testing.assert_close(b["x_hat"], a["x_hat"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b["likelihoods"]["y"], a["likelihoods"]["y"], rtol=1e-3, atol=1e-6)
    nhwc.model.train()
    values = nhwc.train_step(x)
    assert values is not None and torch.isfinite(values).all()
    assert seen[-1].is_contiguous(memory_format=torch.channels_last)  # the batch too
    y = nhwc.model._analysis(seen[-1])  # and the latent the entropy path works on
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()


def test_channels_last_auto_is_nhwc_on_the_cpu_only(make_cfg, tmp_path: Path) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert channels_last_for("auto", cpu) and not channels_last_for("auto", cuda)
    assert not channels_last_for("auto", cpu, fsdp=True)  # FSDP shards NCHW weights only
    assert not channels_last_for("auto", None) and channels_last_for(True, cuda)
    trainer = build_trainer(make_cfg(tmp_path, "trainer.device=cpu"))  # the default: auto
    assert trainer.speed.channels_last
    assert trainer.model.g_a[0].weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="channels_last must be true, false or auto"):
        build_trainer(make_cfg(tmp_path, "trainer.channels_last=fast"))


def test_entropy_model_evaluates_likelihoods_in_fp32_under_autocast(make_cfg) -> None:
    # CPU autocast stands in for CUDA: whatever dtype the transforms hand over, the CDF
    # difference of the likelihood is taken in fp32 (bf16 would round it for confident
    # predictions); the entropy model does this itself, no wrapper is installed.
    model = hpcm.build_model("tiny")
    likelihood = model.entropy.likelihood
    residual = torch.tensor([0.0, 0.3, 2.0, 7.0]).reshape(1, 4, 1, 1).bfloat16()
    scales = torch.full_like(residual, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept = likelihood(residual, scales)
    assert kept.dtype == torch.float32
    torch.testing.assert_close(kept, likelihood(residual.float(), scales.float()))
    with torch.no_grad():
        prepared = speed_options(make_cfg, autocast_bf16=True).prepare_model(model)
    assert "likelihood" not in vars(prepared.entropy)  # nothing patched onto the instance


def test_float_output_casts_bf16_outputs_for_the_loss(make_cfg) -> None:
    speed = speed_options(make_cfg, autocast_bf16=True)
    out = {
        "x_hat": torch.zeros(1, 3, 2, 2, dtype=torch.bfloat16),
        "likelihoods": {"y": torch.ones(1, 2, dtype=torch.bfloat16)},
        "y_scale_map": torch.zeros(2, dtype=torch.long),
    }
    cast = speed.float_output(out)
    assert cast["x_hat"].dtype == cast["likelihoods"]["y"].dtype == torch.float32
    assert cast["y_scale_map"].dtype == torch.long
    assert speed_options(make_cfg).float_output(out) is out  # off: untouched


@pytest.mark.slow
def test_compiled_training_step_runs_on_the_cpu(make_cfg, tmp_path: Path) -> None:
    # backend=eager: dynamo traces the model (graph breaks allowed) without generating code,
    # which checks the wiring in ~20-40 s; inductor on the CPU takes minutes for this model.
    torch._dynamo.reset()
    eager = build_trainer(make_cfg(tmp_path, "optimizer=balanced"))
    x = next(iter(eager.loaders.train))
    expected = eager.train_step(x)
    compiled = build_trainer(
        make_cfg(
            tmp_path, "optimizer=balanced", "trainer.compile=true", "trainer.compile_backend=eager"
        )
    )
    assert compiled.train_model is not compiled.model  # the OptimizedModule
    values = compiled.train_step(x)
    assert values is not None
    torch.testing.assert_close(values, expected, rtol=1e-4, atol=1e-5)  # same noise, same step
    torch._dynamo.reset()


def _gradients(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)  # the same quantization noise for both runs
    model.zero_grad(set_to_none=True)
    out = model(x)
    bits = sum(-torch.log2(v).sum() for v in out["likelihoods"].values())
    (bits / x[0, 0].numel() + 100 * (out["x_hat"] - x).pow(2).mean()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["tiny", "tiny_phi"])
def test_activation_checkpointing_gives_the_same_gradients_with_less_memory(name: str) -> None:
    from hpcm.train.memory import activation_bytes

    torch.manual_seed(0)
    model = hpcm.build_model(name).train()
    x = torch.rand(2, 3, 256, 256)
    plain, plain_bytes = _gradients(model, x), activation_bytes(model, (256, 256))
    model.set_activation_checkpointing(True)
    recomputed, recomputed_bytes = _gradients(model, x), activation_bytes(model, (256, 256))
    assert plain.keys() == recomputed.keys() and len(plain) == len(list(model.parameters()))
    for key, grad in plain.items():
        assert torch.allclose(recomputed[key], grad, rtol=1e-5, atol=1e-7), key
    assert recomputed_bytes < 0.8 * plain_bytes


def test_the_run_states_its_memory_needs_first(make_cfg, tmp_path: Path, caplog) -> None:
    from hpcm.train.memory import GIB, estimate_memory

    cfg = make_cfg(tmp_path, "trainer.activation_checkpointing=true", "data.batch_size=4")
    with caplog.at_level("INFO", logger="hpcm.train.build"):
        trainer = build_trainer(cfg, report_memory=True)
    assert all(t.checkpoint_blocks for t in (trainer.model.g_a, trainer.model.h_s))
    line = next(r.message for r in caplog.records if r.message.startswith("memory"))
    estimate = estimate_memory(trainer.model, (256, 256))
    assert estimate.parameters == 4 * 532_003 and estimate.optimizer_state == 8 * 532_003
    assert line == estimate.line(4)
    assert f"activations {estimate.activations_per_image / GIB:.2f} GiB per 256x256 image" in line
    assert "per rank" in estimate.line(4, shards=2)


def _real_saved_bytes(model: torch.nn.Module, x: torch.Tensor, autocast) -> int:
    """What autograd saves in a real training forward of ``x``, counted as the estimate counts
    on fake tensors (by storage, the parameters themselves left out)."""
    from torch.multiprocessing.reductions import StorageWeakRef

    params = {StorageWeakRef(p.untyped_storage()) for p in model.parameters()}
    saved: dict = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if StorageWeakRef(t.untyped_storage()) not in params:
            saved[StorageWeakRef(t.untyped_storage())] = t.untyped_storage().nbytes()
        return t

    with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(saved.values())


def test_autocast_weight_copies_are_counted_once_per_step_not_per_image() -> None:
    # Under autocast every convolution saves a bf16 copy of its weight, once whatever the batch:
    # counted per image, the estimate grew by those copies with every image of the batch.
    from hpcm.train.memory import activation_bytes, estimate_memory

    torch.manual_seed(0)
    model = hpcm.build_model("tiny").train()
    x = torch.rand(3, 3, 256, 256)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    estimate = estimate_memory(model, (256, 256), bf16)
    real = _real_saved_bytes(model, x, bf16)
    assert estimate.activations(3) == real
    assert 3 * activation_bytes(model, (256, 256), bf16) > real  # the old count per image
    assert estimate.activations_per_step > 0
    plain = estimate_memory(model, (256, 256))  # one forward: nothing weight-sized per step
    assert plain.activations_per_step == 0
    assert plain.activations(3) == pytest.approx(
        _real_saved_bytes(model, x, contextlib.nullcontext()), rel=0.01
    )
    assert estimate.total(3) == 4 * plain.parameters + estimate.activations(3)  # + grads, moments


@pytest.mark.slow
def test_training_forward_traces_into_one_graph() -> None:
    # The schedule plan is built eagerly (HPCM.prepare, as the trainer does before each step);
    # the compiled forward then only looks it up: no graph break at the plan's nonzero.
    torch._dynamo.reset()
    model = hpcm.build_model("tiny").train()
    x = torch.rand(2, 3, 256, 256)
    model.prepare(x.shape, x.device)
    explanation = torch._dynamo.explain(model)(x)
    reasons = [r.reason for r in explanation.break_reasons]
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), reasons
    torch._dynamo.reset()


def test_compiled_runs_drop_the_smaller_last_batch(make_cfg, tmp_path: Path) -> None:
    # 5 samples in batches of 2: a compiled step would recompile for a last batch of 1.
    overrides = ("data.samples_per_epoch=5", "data.batch_size=2")
    eager = build_trainer(make_cfg(tmp_path / "a", *overrides))
    assert [len(x) for x in eager.loaders.train] == [2, 2, 1]
    compiled = build_trainer(
        make_cfg(
            tmp_path / "b", *overrides, "trainer.compile=true", "trainer.compile_backend=eager"
        )
    )
    assert [len(x) for x in compiled.loaders.train] == [2, 2]


def test_compiled_runs_checkpoint_the_bare_model(make_cfg, tmp_path: Path) -> None:
    # The compiled module wraps the model (its keys would gain "_orig_mod."); checkpoints, and
    # so resume, evaluate.py and init_from, must see the model's own keys.
    trainer = build_trainer(
        make_cfg(tmp_path, "trainer.compile=true", "trainer.compile_backend=eager")
    )
    assert trainer.train_model is not trainer.model
    assert any(k.startswith("_orig_mod.") for k in trainer.train_model.state_dict())
    keys = list(trainer.state_dict(0)["state_dict"])
    assert keys == list(trainer.model.state_dict())
    assert not any("_orig_mod" in k for k in keys)


def test_rates_are_computed_in_fp32_under_autocast() -> None:
    # CPU autocast stands in for CUDA bf16: the transforms run in bf16, but the residuals, the
    # noise and the likelihoods of y and z must be fp32 (bf16 rounds 150.3 + 0.37 to 150).
    model = hpcm.build_model("tiny").train()
    with torch.no_grad():  # latents of tens to hundreds, where bf16 steps are 0.125 to 1
        model.g_a[-1].weight.mul_(300.0)
        model.g_a[-1].bias.mul_(300.0)
    x = torch.rand(2, 3, 256, 256)
    inputs = []
    likelihood = model.entropy.likelihood
    model.entropy.likelihood = lambda res, scales: (
        inputs.append((res, scales)) or likelihood(res, scales)
    )
    bpp = {}
    for name, enabled in (("fp32", False), ("bf16", True)):
        torch.manual_seed(1)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = model(x)
        bpp[name] = bpp_from_likelihoods(out["likelihoods"], 2 * 256 * 256)
    for residual, scales in inputs[2:]:  # z, then y, under autocast
        assert residual.dtype == scales.dtype == torch.float32
    # The same noise; only the bf16 transforms differ (measured: 0.04 % at ~3.3 bpp).
    torch.testing.assert_close(bpp["bf16"], bpp["fp32"], rtol=5e-3, atol=0.0)

    value = torch.full((4,), 150.3).bfloat16()
    torch.manual_seed(2)
    noisy = model.noise(value)
    torch.manual_seed(2)
    assert noisy.dtype == torch.float32
    torch.testing.assert_close(noisy, value.float() + torch.empty(4).uniform_(-0.5, 0.5))


# Page faults of three training-like steps (forward + backward of the tiny model), after one warm-up.
_FAULTS_SCRIPT = """
import resource, sys
import torch
import hpcm
from hpcm.device import keep_freed_host_memory
if sys.argv[1] == "keep":
    assert keep_freed_host_memory()
torch.manual_seed(0)
torch.set_num_threads(2)  # the default run on 2 cores, whatever the test worker's setting
model, x = hpcm.build_model("tiny"), torch.rand(1, 3, 256, 256)
def step():
    sum(v.sum() for v in model(x)["likelihoods"].values()).backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's allocator setting",
)
def test_kept_host_memory_spares_the_page_faults_of_each_step() -> None:
    def faults(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True
        )
        return int(run.stdout.strip())

    # Measured on two threads: ~20,000 by default (activations mapped and unmapped every step),
    # ~1,500 kept (one thread: ~10,000 against ~2,000).
    assert faults("keep") * 5 < faults("default")


def test_trainer_config_reaches_the_global_settings(make_cfg, tmp_path: Path) -> None:
    speed = SpeedOptions.from_config(make_cfg(tmp_path, "trainer.num_threads=1").trainer)
    assert speed.num_threads == 1 and speed.keep_freed_host_memory
