"""The one place that turns a device name from a command line or a config into a device."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device name that does not exist here (unknown, or CUDA without a GPU)."""


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` or nothing: CUDA when available, else the CPU; otherwise any ``torch.device``
    string (``cpu``, ``cuda``, ``cuda:1`` ...), refused when this machine cannot run it."""
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise DeviceError(f"unknown device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asked for, but CUDA is not available")
    return device
