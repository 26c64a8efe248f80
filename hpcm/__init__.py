"""HPCM learned image codec with Balanced rate-distortion training.

The public face: :func:`build_model`, :func:`load_model` and the model classes, imported on first
use so that ``import hpcm`` (and the light command-line tools) stay fast. The packages below it:
``hpcm.codec`` (the codec), ``hpcm.optim`` (optimizers and task balancers), ``hpcm.train``
(training), ``hpcm.eval`` (evaluation and reports).
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "HPCM": "hpcm.codec.model",
    "HPCMConfig": "hpcm.codec.model",
    "MODEL_CONFIGS": "hpcm.codec.model",
    "build_model": "hpcm.codec.model",
    "CheckpointError": "hpcm.codec.checkpoint",
    "load_model": "hpcm.codec.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'hpcm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = ["HPCM", "MODEL_CONFIGS", "CheckpointError", "HPCMConfig", "build_model", "load_model"]
