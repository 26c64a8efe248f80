"""Data-parallel training across processes (PyTorch DDP, launched by ``torchrun``).

``torchrun`` starts one process per GPU (or CPU worker) and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` joins them into one process group (NCCL on CUDA, gloo on
the CPU). :class:`DistContext` is what the trainer keeps: its collectives are no-ops in a single
process, so the training loop has one code path.

What keeps the ranks identical: the model is wrapped in ``DistributedDataParallel``
(gradients averaged in the backward), the Balanced task losses are averaged over the ranks before
every FAMO weight update (``FAMOWeighting(reduce_fn=ctx.all_reduce_mean)``), and the decisions
to skip a non-finite batch and to stop on a signal are taken by all ranks together, in the step's
one small collective (:meth:`DistContext.all_true`).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "nccl", "gloo")
# Environment torchrun (and srun + torchrun) sets in every worker.
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(RuntimeError):
    """A distributed setup that cannot work (bad backend, torchrun without ddp, ...)."""


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and the collectives the trainer needs (no-ops for one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when this process joined a process group (``backend`` set; also with one
        process under torchrun, so that DDP and its collectives really run) or several
        processes train together."""
        return self.backend is not None or self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The rank that writes checkpoints, metrics and logs."""
        return self.rank == 0

    def all_reduce_mean(self, tensor: Tensor) -> Tensor:
        """Mean over the ranks, in place (the ``reduce_fn`` of :class:`FAMOWeighting`)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(self.world_size)
        return tensor

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum over the ranks, in place."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_true(self, flags: Sequence[Tensor | bool], device: torch.device) -> list[bool]:
        """For each of ``flags`` (a one-element tensor or a host bool), whether it is true on
        every rank. Under DDP the flags travel together: one collective (a MIN over a tensor on
        ``device``, host bools filled in on the device, no copy) and one host sync for them
        all. In one process no collective; each tensor flag is read (a host sync)."""
        if not self.enabled:
            return [bool(flag) for flag in flags]
        values = torch.stack(
            [
                flag.detach().to(device=device, dtype=torch.float32).reshape(())
                if isinstance(flag, Tensor)
                else torch.full((), float(flag), device=device)
                for flag in flags
            ]
        )
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
        return [value > 0.0 for value in values.tolist()]

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, ordered by rank, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def noise_seed(self, seed: int) -> int:
        """Seed of this rank's quantization-noise stream: ranks draw independent noise."""
        state = np.random.SeedSequence([seed, self.rank]).generate_state(1, np.uint64)
        return int(state[0] & np.uint64(0x7FFF_FFFF_FFFF_FFFF))


# Set when this module created the process group, so that cleanup() leaves a group it did not
# create (e.g. one a test harness set up) alone.
_OWNED = False


def launched_world_size() -> int:
    """``WORLD_SIZE`` of the launcher (1 when not started by torchrun or srun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed(enabled: bool, device_type: str, backend: str = "auto") -> DistContext:
    """Join the process group torchrun prepared, or a single-process context.

    Args:
        enabled: ``trainer.ddp``. Without it, a multi-process launch is refused (every process
            would train alone and write the same run directory).
        device_type: ``"cuda"`` or ``"cpu"``: picks the backend for ``"auto"`` (NCCL, gloo)
            and, on CUDA, the GPU of this process (``cuda:LOCAL_RANK``).
        backend: ``auto``, ``nccl`` or ``gloo``.
    """
    global _OWNED
    world = launched_world_size()
    if not enabled:
        if world > 1:
            raise DistributedError(
                f"launched with WORLD_SIZE={world} but trainer.ddp=false: add trainer=ddp "
                "(or trainer.ddp=true) to train on all processes together"
            )
        return DistContext()
    if backend not in BACKENDS:
        raise DistributedError(
            f"unknown trainer.ddp_backend {backend!r}; choose from auto, nccl, gloo"
        )
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl" and device_type != "cuda":
        raise DistributedError("trainer.ddp_backend=nccl needs CUDA; use gloo on the CPU")
    if dist.is_available() and dist.is_initialized():  # joined already (a second trainer)
        return DistContext(
            dist.get_rank(), dist.get_world_size(), _local_rank(), dist.get_backend()
        )
    missing = [key for key in ENV_KEYS if key not in os.environ]
    if missing:
        log.warning(
            "trainer.ddp=true but %s not set (not started by torchrun): training in one process",
            ", ".join(missing),
        )
        return DistContext()
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed")
    local_rank = _local_rank()
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) visible: "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    _OWNED = True
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    if ctx.is_main:
        log.info("DDP: %d processes, backend %s", ctx.world_size, backend)
    return ctx


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_device(device: torch.device, ctx: DistContext) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` under DDP on CUDA, else ``device``."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def cleanup() -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    global _OWNED
    if _OWNED and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED = False


def wrap_ddp(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` under DDP, else (one process, or a model sharded by
    :func:`shard_fsdp`) ``model`` itself.

    Buffers are not broadcast at every forward: the model's only buffers are the coding tables,
    which training does not change.
    """
    if not ctx.enabled or is_sharded(model):  # FSDP reduces the gradients itself
        return model
    device_ids: Sequence[int] | None = [device.index] if device.type == "cuda" else None
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = (
        {"forward_sync_buffers": False}  # PyTorch >= 2.14
        if "forward_sync_buffers" in parameters
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(model, device_ids=device_ids, **no_sync)


# ----------------------------------------------------------------------------- FSDP
def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards as units (gathered for their forward, freed after): the four
    transforms, every adaptor and both priors; the rest (cross-attentions, context transitions,
    gains, z parameters) is the root's unit."""
    units = [model.g_a, model.g_s, model.h_a, model.h_s]
    return [*units, *model.adaptors, *model.priors]


def shard_fsdp(model: nn.Module) -> nn.Module:
    """Shard parameters, gradients and optimizer state over the ranks (PyTorch FSDP2,
    ``fully_shard``), in place: build the optimizer afterwards. Gradients are averaged over the
    ranks in the backward (reduce-scatter), as DDP averages them."""
    from torch.distributed.fsdp import fully_shard

    # FSDP shards contiguous parameters only: NCHW weights (check_config already refuses
    # trainer.channels_last with FSDP; the model's own switch keeps its layout record in step).
    model.set_memory_format(False)
    for unit in fsdp_units(model):
        fully_shard(unit)
    fully_shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Model and optimizer state dicts of a sharded model, gathered whole on rank 0 in CPU
    memory (empty on the other ranks); every rank must call it. Optimizer state is keyed by
    parameter name (``torch.distributed.checkpoint.state_dict``)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(model, options=options),
        get_optimizer_state_dict(model, optimizer, options=options),
    )


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict
) -> None:
    """Inverse of :func:`full_state`: every rank passes the whole state dicts."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)
