"""HPCM learned image codec with Balanced rate-distortion training."""

from hpcm.checkpoint import CheckpointError, load_model
from hpcm.model import HPCM, MODEL_CONFIGS, HPCMConfig


def build_model(name: str = "hpcm_base", **overrides) -> HPCM:
    """Build an untrained model by name (``hpcm_base``, ``hpcm_large``, ``tiny``); keyword
    arguments override fields of its :class:`HPCMConfig` (e.g. ``M=64`` for a wider tiny)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_CONFIGS)}")
    config = MODEL_CONFIGS[name]
    if overrides:
        config = HPCMConfig.from_dict({**config.to_dict(), **overrides})
    return HPCM(config, name=name)


__all__ = ["HPCM", "MODEL_CONFIGS", "CheckpointError", "HPCMConfig", "build_model", "load_model"]
