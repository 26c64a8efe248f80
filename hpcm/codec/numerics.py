"""The numeric settings that decide the entropy parameters, pinned while coding.

A decoder recomputes the encoder's probabilities, so both sides must compute the entropy
parameters bit for bit alike. Process-wide torch settings change those floats: cuDNN's
autotuner (``cudnn.benchmark``) and its non-deterministic algorithms (``h_s``'s transposed
convolutions have some) pick different kernels from run to run, and a TF32 or bf16 policy for
fp32 matmuls and convolutions (``torch.set_float32_matmul_precision("medium")`` also switches
oneDNN's fp32 matmul to bf16 on CPUs that have it) rounds differently from IEEE fp32.

:func:`coding_numerics` pins one policy (deterministic cuDNN, no autotuning, IEEE fp32 for every
backend's matmul and convolution, no autocast) for a block and restores the caller's settings
afterwards; :meth:`hpcm.codec.model.HPCM.compress` and ``decompress`` run inside it.

The per-backend ``fp32_precision`` attributes are PyTorch's interface for the TF32/bf16 policy
since 2.9 ("TensorFloat-32 (TF32) on Ampere (and later) devices", CUDA semantics notes of the
PyTorch documentation); they supersede ``allow_tf32`` and ``set_float32_matmul_precision``,
which set the same state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

# (backend, operation) pairs whose fp32 policy is pinned to IEEE while coding.
FP32_PRECISION_SETTINGS = (
    ("cuda", "matmul"),
    ("cudnn", "conv"),
    ("cudnn", "rnn"),
    ("mkldnn", "matmul"),
    ("mkldnn", "conv"),
    ("mkldnn", "rnn"),
)
CODING_FP32_PRECISION = "ieee"


def _precision_handles() -> list[object]:
    handles = []
    for backend, operation in FP32_PRECISION_SETTINGS:
        handle = getattr(getattr(torch.backends, backend, None), operation, None)
        if handle is not None and hasattr(handle, "fp32_precision"):
            handles.append(handle)
    return handles


def _autocast_devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


@contextmanager
def coding_numerics() -> Iterator[None]:
    """Run a block (or, as a decorator, a function) with the numeric settings of entropy
    coding: deterministic cuDNN without autotuning, IEEE fp32 matmuls and convolutions on every
    backend, autocast off. The caller's settings are restored afterwards, also when the block
    raises."""
    cudnn = torch.backends.cudnn
    handles = _precision_handles()
    saved_cudnn = cudnn.deterministic, cudnn.benchmark
    saved_precisions = [handle.fp32_precision for handle in handles]
    try:
        cudnn.deterministic, cudnn.benchmark = True, False
        for handle in handles:
            handle.fp32_precision = CODING_FP32_PRECISION
        with ExitStack() as stack:
            for device_type in _autocast_devices():
                stack.enter_context(torch.autocast(device_type, enabled=False))
            yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved_cudnn
        for handle, precision in zip(handles, saved_precisions, strict=True):
            handle.fp32_precision = precision
