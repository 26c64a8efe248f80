"""Checkpoint files: atomic writes, safe loading, the project checkpoint, and loading a model
from any checkpoint (layouts: :mod:`hpcm.codec.state_dict`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hpcm.codec.model import HPCM, HPCMConfig
from hpcm.codec.state_dict import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointError
from hpcm.files import atomic_write


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Save with ``torch.save`` so that ``path`` is either the old file or the complete new one
    (:func:`hpcm.files.atomic_write`); the directory is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: torch.save(obj, file))


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint without executing arbitrary pickled code (``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def model_checkpoint(model) -> dict:
    """The model part of a project checkpoint; trainers add their own keys (epoch, optimizer
    state ...) beside it. Everything in it loads with ``weights_only=True``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_name": model.name,
        "model_config": model.config.to_dict(),
        "state_dict": model.state_dict(),
    }


# Checkpoints shipped with the package, named ``pretrained:NAME`` (see pretrained/README.md).
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
PRETRAINED_PREFIX = "pretrained:"


def checkpoint_path(source: str | os.PathLike) -> Path:
    """A checkpoint file: ``pretrained:NAME`` is ``hpcm/codec/pretrained/NAME.pth.tar``."""
    text = str(source)
    if not text.startswith(PRETRAINED_PREFIX):
        return Path(source)
    name = text[len(PRETRAINED_PREFIX) :]
    path = PRETRAINED_DIR / f"{name}.pth.tar"
    if not path.is_file():
        known = sorted(p.name.removesuffix(".pth.tar") for p in PRETRAINED_DIR.glob("*.pth.tar"))
        raise CheckpointError(f"unknown pretrained model {name!r}; shipped: {', '.join(known)}")
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The dict in a checkpoint file (or ``pretrained:NAME``), loaded with ``weights_only=True``
    (no pickled code runs).

    Every failure is one :class:`CheckpointError` line: a missing file, bytes that are not a
    PyTorch file of tensors and plain data, or a file that holds something other than a dict.
    """
    path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = safe_torch_load(path)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_error(error)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"cannot read checkpoint {path}: it holds a {type(data).__name__}")
    return data


def _load_error(error: Exception) -> str:
    """The informative part of torch.load's (often many-line) message."""
    text = str(error)
    if "WeightsUnpickler error:" in text:  # weights_only refused the bytes: not plain data
        detail = text.split("WeightsUnpickler error:")[1].split("Check the documentation")[0]
        return f"not a PyTorch file of tensors and plain data: {' '.join(detail.split())}"
    return (text.strip().splitlines() or [type(error).__name__])[0]


def check_same_model(source: str, name: str, config: HPCMConfig, model: HPCM) -> None:
    """The one compatibility check between a checkpoint's model (``name``, ``config``) and the
    model a run or a caller builds: the same name and the same widths and depths."""
    if name != model.name:
        raise CheckpointError(f"{source} holds model {name!r}, this run builds model={model.name}")
    if config != model.config:
        ours = model.config.to_dict()
        diff = [
            f"{k}={v} (this run: {ours[k]})" for k, v in config.to_dict().items() if v != ours[k]
        ]
        raise CheckpointError(f"{source} holds model {name!r} with other sizes: {', '.join(diff)}")


def load_model(source, name: str | None = None, device=None, update: bool = True) -> HPCM:
    """A ready-to-code model (eval mode, coding tables built) from a checkpoint.

    ``source`` is a path (or ``pretrained:NAME``) or an already loaded dict, in any layout
    :meth:`HPCM.from_state_dict` reads; ``name`` says which model a bare state dict holds
    (by default it is found from the parameter shapes). Files are loaded with
    ``weights_only=True``: no pickled code runs.
    """
    if isinstance(source, (str, os.PathLike)):
        source = read_checkpoint(source)
    model = HPCM.from_state_dict(source, name=name)
    if device is not None:
        model.to(device)
    if update:
        model.update()
    return model
