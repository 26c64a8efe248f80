"""What a training configuration needs in memory, stated before the first step.

Parameters and optimizer state are counted; the activations one training image keeps for the
backward are measured by running the training forward on fake tensors (PyTorch's
``FakeTensorMode``: shapes and dtypes only, no memory, no arithmetic) and adding up every
tensor autograd saves (``torch.autograd.graph.saved_tensors_hooks``), for batches of one and two
images under autocast: what grows with the batch is per image, the rest is saved once per step
(the low-precision copies of the weights, which a per-image count multiplied by the batch
overstated: by 50% for hpcm_1b at batch 8 in bf16 on an H200, docs/scale.md). With activation
checkpointing the blocks' inputs, which the recomputation keeps, are not counted: the figure is
an estimate, a little low in that case, and it does not include the allocator's overhead.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeCopyMode, FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef

GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int  # bytes
    optimizer_state: int  # bytes
    activations_per_image: int  # bytes, for one crop of ``crop``
    crop: tuple[int, int]
    activations_per_step: int = 0  # bytes saved once whatever the batch (autocast's weight copies)

    def activations(self, batch_size: int) -> int:
        return self.activations_per_step + batch_size * self.activations_per_image

    def total(self, batch_size: int, shards: int = 1) -> float:
        """Bytes of one process: weights, gradients and optimizer state (divided by ``shards``
        under FSDP) and the activations of a batch."""
        weights = (2 * self.parameters + self.optimizer_state) / shards  # + gradients
        return weights + self.activations(batch_size)

    def line(self, batch_size: int, shards: int = 1) -> str:
        """One log line; ``shards`` > 1 divides weights, gradients and optimizer state (FSDP)."""
        per = "per rank " if shards > 1 else ""
        step = self.activations_per_step
        once = f" + {step / GIB:.2f} GiB per step" if step >= 0.005 * GIB else ""
        return (
            f"memory {per}(estimate): parameters {self.parameters / shards / GIB:.2f} GiB, "
            f"gradients {self.parameters / shards / GIB:.2f} GiB, optimizer state "
            f"{self.optimizer_state / shards / GIB:.2f} GiB, activations "
            f"{self.activations_per_image / GIB:.2f} GiB per {self.crop[0]}x{self.crop[1]} image"
            f"{once} (batch {batch_size}: {self.activations(batch_size) / GIB:.2f} GiB); total "
            f"about {self.total(batch_size, shards) / GIB:.2f} GiB"
        )


def optimizer_state_bytes(model: nn.Module, moments: int = 2) -> int:
    """Adam and cautious Adam keep two moments per parameter (a step count aside)."""
    return moments * sum(p.numel() * p.element_size() for p in model.parameters())


def activation_bytes(
    model: nn.Module,
    crop: tuple[int, int],
    autocast: AbstractContextManager[Any] | None = None,
    batch_size: int = 1,
) -> int:
    """Bytes autograd saves for the backward of one training forward of ``batch_size`` images
    of ``crop`` (under ``autocast``, the training step's), measured on a fake copy of ``model``
    (the model itself is not touched)."""
    device = next(model.parameters()).device
    # The schedule plan is cached per shape and device: build the real one first, so that the
    # fake forward below finds it and never caches a plan made of fake tensors.
    model.prepare((batch_size, 3, *crop), device)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with FakeCopyMode(mode):
        fake = copy.deepcopy(model)
    fake.train()
    # Counted by storage: views of a weight (the GEMM path's reshaped 1x1 kernels) are not
    # activations, and several views of one activation hold its memory once.
    params = {StorageWeakRef(p.untyped_storage()) for p in fake.parameters()}
    saved: dict[StorageWeakRef, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = StorageWeakRef(t.untyped_storage())
        if storage not in params:
            saved[storage] = t.untyped_storage().nbytes()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with mode, autocast or nullcontext(), hooks:
        fake(torch.empty(batch_size, 3, *crop, device=device))
    return sum(saved.values())


def estimate_memory(
    model: nn.Module,
    crop: tuple[int, int],
    autocast: AbstractContextManager[Any] | None = None,
) -> MemoryEstimate:
    """Parameters, Adam state and the activations of ``model`` per ``crop`` image and, under
    ``autocast``, per step (from the saved bytes of batches of one and of two images; ``autocast``
    is entered once for each, so it must be reusable, as ``torch.autocast`` is)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    one = activation_bytes(model, crop, autocast, 1)
    if not isinstance(autocast, torch.autocast):
        # Without autocast (None, or SpeedOptions.autocast's no-op context) what does not grow
        # with the batch is a few small tensors (0.2% of an image's activations on tiny): one
        # forward (about a second on the CPU) suffices.
        return MemoryEstimate(params, optimizer_state_bytes(model), one, tuple(crop))
    per_image = activation_bytes(model, crop, autocast, 2) - one
    return MemoryEstimate(
        params, optimizer_state_bytes(model), per_image, tuple(crop), max(one - per_image, 0)
    )
