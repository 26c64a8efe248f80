"""Speed and memory options of the training step: bf16 autocast, channels_last, torch.compile,
activation checkpointing.

All are off by default (``trainer.autocast_bf16``, ``trainer.channels_last``,
``trainer.compile``, ``trainer.activation_checkpointing``) until measured on the target GPU
(``benchmarks/gpu_check.sh``).

- ``autocast_bf16``: the transforms and the context model run under CUDA bf16 autocast; the
  model computes the residuals, the quantization noise and the rounding of y and z in fp32
  (:meth:`hpcm.codec.model.HPCM.forward`), the entropy model its likelihoods
  (:meth:`hpcm.codec.entropy.GGMEntropyModel.likelihood`), and the loss is computed in fp32
  from ``x_hat`` and the likelihoods. CUDA only: on other devices it is refused (``ValueError``).
- ``channels_last``: one memory format for the whole model and its input: every convolution
  weight, the batch and the activations of the transforms and of the entropy-parameter path in
  NHWC (``true``) or all in NCHW (``false``; :meth:`hpcm.codec.model.HPCM.set_memory_format`).
  Outside training the codec keeps its own CPU policy (transforms NHWC, entropy path NCHW).
- ``activation_checkpointing``: the residual blocks of the four transforms are recomputed in
  the backward instead of keeping their activations
  (:meth:`hpcm.codec.model.HPCM.set_activation_checkpointing`): the same gradients, less
  memory, about one more forward of the transforms per step. For HPCM-1B.
- ``compile``: ``torch.compile`` of the training forward (``compile_mode``, ``compile_backend``
  choose its mode and backend; ``backend=eager`` checks that the model traces, without code
  generation). Validation runs uncompiled: its padded image sizes vary.

Process-wide torch settings that these options need are made once, by the training entrypoint,
through :func:`apply_global_settings`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hpcm.device import keep_freed_host_memory
from hpcm.train.data import to_float

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class SpeedOptions:
    """The speed keys of the ``trainer`` config group, whose defaults live in
    conf/trainer/default.yaml (:meth:`from_config`)."""

    autocast_bf16: bool
    channels_last: bool
    compile: bool
    compile_mode: str | None
    compile_backend: str
    activation_checkpointing: bool
    num_threads: int | None  # torch's CPU threads; None: torch's default
    keep_freed_host_memory: bool  # hpcm.device.keep_freed_host_memory

    @classmethod
    def from_config(
        cls, trainer_cfg: Mapping[str, Any], device: torch.device | None = None
    ) -> SpeedOptions:
        """The options of a ``trainer`` config group (conf/trainer/default.yaml holds them)
        for a run on ``device``: ``channels_last: auto`` is NHWC on the CPU (unless FSDP shards
        the weights) and NCHW elsewhere or without a device."""
        mode = trainer_cfg["compile_mode"]
        return cls(
            autocast_bf16=bool(trainer_cfg["autocast_bf16"]),
            channels_last=channels_last_for(
                trainer_cfg["channels_last"], device, bool(trainer_cfg.get("fsdp", False))
            ),
            compile=bool(trainer_cfg["compile"]),
            compile_mode=None if mode in (None, "default") else str(mode),
            compile_backend=str(trainer_cfg["compile_backend"]),
            activation_checkpointing=bool(trainer_cfg["activation_checkpointing"]),
            num_threads=int(trainer_cfg["num_threads"]) if trainer_cfg["num_threads"] else None,
            keep_freed_host_memory=bool(trainer_cfg["keep_freed_host_memory"]),
        )

    def check(self, device: torch.device) -> None:
        """``ValueError`` for an option this device cannot run."""
        if self.autocast_bf16 and device.type != "cuda":
            raise ValueError(
                f"trainer.autocast_bf16=true needs a CUDA device (this run uses {device}); "
                "set trainer.autocast_bf16=false on the CPU"
            )
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"unknown trainer.compile_mode {self.compile_mode!r}; choose from "
                + ", ".join(m for m in COMPILE_MODES if m)
            )

    # --------------------------------------------------------------------------- the model
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """In place: the model's one memory format (``HPCM.set_memory_format``), NHWC for every
        weight and activation with ``channels_last``, NCHW without; activation checkpointing
        when that is on."""
        model.set_memory_format(self.channels_last)
        if self.activation_checkpointing:
            model.set_activation_checkpointing(True)
        return model

    def compiled(self, module: nn.Module) -> nn.Module | Callable[..., Any]:
        """``torch.compile(module)`` when ``compile`` is on, else ``module`` itself."""
        if not self.compile:
            return module
        return torch.compile(module, mode=self.compile_mode, backend=self.compile_backend)

    # --------------------------------------------------------------------------- the step
    def batch(self, x: Tensor, device: torch.device) -> Tensor:
        """The batch on ``device`` as float in [0, 1] (uint8 training batches are converted
        there, after the copy), in channels_last when that is on."""
        x = to_float(x.to(device, non_blocking=True))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        """bf16 autocast on CUDA when ``autocast_bf16``, else a no-op."""
        if self.autocast_bf16 and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def float_output(self, output: dict[str, Any]) -> dict[str, Any]:
        """The model output with ``x_hat`` and the likelihoods in fp32 (for the loss)."""
        if not self.autocast_bf16:
            return output
        return {key: _to_float(value) for key, value in output.items()}


def channels_last_for(value: bool | str, device: torch.device | None, fsdp: bool = False) -> bool:
    """``trainer.channels_last`` (``true``, ``false`` or ``auto``) for a run on ``device``.

    ``auto`` is NHWC on the CPU, where oneDNN's convolutions run faster in that format (a
    training step of the tiny model and of HPCM-Base takes less time, docs/scale.md), and NCHW
    on other devices until measured there, and with FSDP (it shards NCHW weights only).
    """
    if isinstance(value, bool):
        return value
    if value != "auto":
        raise ValueError(f"trainer.channels_last must be true, false or auto, got {value!r}")
    return device is not None and device.type == "cpu" and not fsdp


def _to_float(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, Mapping):
        return {key: _to_float(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_float(item) for item in value)
    return value


def apply_global_settings(speed: SpeedOptions) -> None:
    """The process-wide settings of a training run, made once by the entrypoint: torch's CPU
    threads, glibc keeping freed CPU memory (:func:`hpcm.device.keep_freed_host_memory`).

    With inductor, random ops run as in eager mode (``fallback_random``): the Balanced post-step
    forward replays the RNG state of the step's forward and must draw the same quantization
    noise.
    """
    if speed.compile and speed.compile_backend == "inductor":
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
    if speed.num_threads:
        torch.set_num_threads(speed.num_threads)
    if speed.keep_freed_host_memory:
        keep_freed_host_memory()
