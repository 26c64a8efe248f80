"""Formula-built weights in the official HPCM layout (../shared/spec/vectors/README.md)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec"
VECTORS = SPEC / "vectors"
KODAK = SPEC.parent / "data" / "kodak"

_CONSTANTS = {
    "means_hyper": 0.0,
    "scales_hyper": 1.0,
    "entropy_estimation.beta": 1.5,
    "entropy_estimation.scale_lower_bound.bound": 0.12,
    "entropy_estimation.likelihood_lower_bound.bound": 1e-9,
}
_TABLES = ("scale_table", "quantized_cdf", "cdf_length", "offset")


def official_formula_state_dict(model: str = "HPCM_Base", gain: float = 0.7) -> dict:
    """The state dict the test vectors were made with, keys and shapes as the official model."""
    shapes = json.loads((SPEC / "official-hpcm-state-dict.json").read_text())[model]
    sd = {}
    for key, shape in shapes.items():
        if key.startswith(_TABLES):
            sd[key] = torch.empty(0)
        elif key in _CONSTANTS:
            sd[key] = torch.full(shape, _CONSTANTS[key])
        elif key.startswith("adaptive_params_list."):
            sd[key] = torch.ones(shape)
        elif len(shape) >= 2:
            rng = np.random.default_rng(zlib.crc32(key.encode()))
            w = gain * rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))
            sd[key] = torch.from_numpy(w.astype(np.float32))
        else:
            sd[key] = torch.zeros(shape)
    return sd
