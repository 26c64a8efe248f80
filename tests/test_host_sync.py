"""No host sync in the training step beyond the one finiteness check.

On a GPU every read of a device tensor by the host (``item``, ``bool``, ``float``, ``tolist``,
``cpu``, ``numpy``) waits for the queued kernels, and every tensor made from host data inside
the step is a host-to-device copy that waits too. On the CPU nothing waits, so the test traps
those calls during ``Trainer.train_step`` instead: a torch dispatch mode sees the scalar reads
(``aten._local_scalar_dense``) and tensors made from Python data (``aten.lift_fresh``); the
methods that bypass the dispatcher are wrapped. Allowed: one read in the finiteness check
(``DistContext.all_true``, which also reads the stop request; under DDP one collective agrees on
both) and the optimizer's step counters, which PyTorch keeps on the host.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hpcm.train.build import build_trainer

sys.path.insert(0, str(Path(__file__).parent))

TRAPPED_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default}
TRAPPED_METHODS = ("cpu", "tolist", "numpy")
ALLOWED_CALLER = "all_true"  # the documented per-step sync


class HostReads(TorchDispatchMode):
    """Records the call sites of host reads and host-data tensors, except of ``allowed``
    tensors (by storage); those made by ``ALLOWED_CALLER`` are counted in ``synced``."""

    def __init__(self, allowed: set[int]) -> None:
        super().__init__()
        self.allowed = allowed
        self.found: list[str] = []
        self.synced: list[str] = []

    def record(self, what: str, tensor: object = None) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() in self.allowed:
            return
        stack = traceback.extract_stack()[:-2]
        if any(frame.name == ALLOWED_CALLER for frame in stack):
            self.synced.append(what)
            return
        where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack[-6:]]
        self.found.append(f"{what} at " + " <- ".join(reversed(where)))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in TRAPPED_OPS:
            self.record(str(func), args[0] if args else None)
        return func(*args, **(kwargs or {}))


def _trap_methods(monkeypatch: pytest.MonkeyPatch, reads: HostReads) -> None:
    for name in TRAPPED_METHODS:
        original = getattr(torch.Tensor, name)

        def trapped(self, *args, __original=original, __name=name, **kwargs):
            reads.record(f"Tensor.{__name}", self)
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, trapped)


def _step_counters(optimizer: torch.optim.Optimizer) -> set[int]:
    return {
        state["step"].untyped_storage().data_ptr()
        for state in optimizer.state.values()
        if isinstance(state.get("step"), torch.Tensor)
    }


# Every optimizer of conf/optimizer and Balanced's post-step modes, MSE and MS-SSIM runs (each
# optimizer once with the metric whose code path it adds, to keep the test short).
CASES = [
    ("adam", "0.013"),
    ("adam", "msssim_8.73"),
    ("balanced", "msssim_8.73"),
    ("balanced+subbatch", "msssim_8.73"),
    ("balanced+next", "0.013"),
    ("balanced_hier", "0.013"),
    ("balanced_qp", "msssim_8.73"),
]


def test_the_trap_sees_host_reads() -> None:
    reads = HostReads(allowed=set())
    with reads:
        x = torch.ones(3)
        x.sum().item()
        bool(x.sum() > 0)
        torch.tensor([1.0, 2.0])
    assert len(reads.found) == 3


def _one_step_reads(make_cfg, tmp_path: Path, *overrides: str) -> HostReads:
    """The host reads of a training step (the second: the first makes optimizer state, caches
    and plans)."""
    trainer = build_trainer(make_cfg(tmp_path, *overrides))
    x = next(iter(trainer.loaders.train))
    assert trainer.train_step(x) is not None
    reads = HostReads(_step_counters(trainer.optimizer))
    with pytest.MonkeyPatch.context() as patch:
        _trap_methods(patch, reads)
        with reads:
            values = trainer.train_step(x)
    assert values is not None
    return reads


@pytest.mark.parametrize(("optimizer", "rate_point"), CASES)
def test_training_step_reads_nothing_back_but_the_finiteness_check(
    make_cfg, tmp_path: Path, optimizer: str, rate_point: str
) -> None:
    name, _, mode = optimizer.partition("+")
    overrides = [f"optimizer={name}", f"lambda={rate_point}"]
    if mode:
        update_mode = {"subbatch": "subbatch", "next": "next_batch"}[mode]
        overrides += [
            f"optimizer.balancer.update_mode={update_mode}",
            "optimizer.balancer.exact_warmup_steps=0",
        ]
    reads = _one_step_reads(make_cfg, tmp_path, *overrides)
    assert not reads.found, "\n".join(reads.found)
    assert len(reads.synced) == 1, reads.synced  # bool(finite)


def test_a_ddp_step_syncs_once_for_the_skip_and_the_stop(
    make_cfg, tmp_path: Path, process_group_of_one: None
) -> None:
    # Balanced: its task losses are averaged over the ranks too (collectives, no host reads).
    reads = _one_step_reads(make_cfg, tmp_path, "trainer=ddp", "optimizer=balanced")
    assert not reads.found, "\n".join(reads.found)
    assert reads.synced == ["Tensor.tolist"], reads.synced  # [finite, go on], reduced together
