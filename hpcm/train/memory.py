"""What a training configuration needs in memory, stated before the first step.

Parameters and optimizer state are counted; the activations one training image keeps for the
backward are measured by running the training forward on fake tensors (PyTorch's
``FakeTensorMode``: shapes and dtypes only, no memory, no arithmetic) and adding up every
tensor autograd saves (``torch.autograd.graph.saved_tensors_hooks``). With activation
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

    def line(self, batch_size: int, shards: int = 1) -> str:
        """One log line; ``shards`` > 1 divides weights, gradients and optimizer state (FSDP)."""
        weights = (2 * self.parameters + self.optimizer_state) / shards  # + gradients
        activations = batch_size * self.activations_per_image
        per = "per rank " if shards > 1 else ""
        return (
            f"memory {per}(estimate): parameters {self.parameters / shards / GIB:.2f} GiB, "
            f"gradients {self.parameters / shards / GIB:.2f} GiB, optimizer state "
            f"{self.optimizer_state / shards / GIB:.2f} GiB, activations "
            f"{self.activations_per_image / GIB:.2f} GiB per {self.crop[0]}x{self.crop[1]} image "
            f"(batch {batch_size}: {activations / GIB:.2f} GiB); total about "
            f"{(weights + activations) / GIB:.2f} GiB"
        )


def optimizer_state_bytes(model: nn.Module, moments: int = 2) -> int:
    """Adam and cautious Adam keep two moments per parameter (a step count aside)."""
    return moments * sum(p.numel() * p.element_size() for p in model.parameters())


def activation_bytes(
    model: nn.Module,
    crop: tuple[int, int],
    autocast: AbstractContextManager[Any] | None = None,
) -> int:
    """Bytes autograd saves for the backward of one training forward of a ``crop`` image
    (under ``autocast``, the training step's), measured on a fake copy of ``model`` (the model
    itself is not touched)."""
    device = next(model.parameters()).device
    # The schedule plan is cached per shape and device: build the real one first, so that the
    # fake forward below finds it and never caches a plan made of fake tensors.
    model.prepare((1, 3, *crop), device)
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
        fake(torch.empty(1, 3, *crop, device=device))
    return sum(saved.values())


def estimate_memory(
    model: nn.Module,
    crop: tuple[int, int],
    autocast: AbstractContextManager[Any] | None = None,
) -> MemoryEstimate:
    """Parameters, Adam state and the activations of one ``crop`` image of ``model``."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    activations = activation_bytes(model, crop, autocast)
    return MemoryEstimate(params, optimizer_state_bytes(model), activations, tuple(crop))
