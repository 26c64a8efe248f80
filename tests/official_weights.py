"""Formula-built weights in the official HPCM layout (tests/data/README.md), and where the tests
find their data: the small facts in tests/data ship with the repository; the team's shared folder
(images and the kodim23 vectors) is ``$HPCM_SHARED``, by default ``shared`` beside the clone."""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path

import numpy as np
import skimage.data
import torch

import hpcm
from hpcm.codec.state_dict import convert_official_state_dict

DATA = Path(__file__).resolve().parent / "data"
SHARED = Path(os.environ.get("HPCM_SHARED") or Path(__file__).resolve().parents[2] / "shared")
VECTORS = SHARED / "spec" / "vectors"
KODAK = SHARED / "data" / "kodak"

_CONSTANTS = {
    "means_hyper": 0.0,
    "scales_hyper": 1.0,
    "entropy_estimation.beta": 1.5,
    "entropy_estimation.scale_lower_bound.bound": 0.12,
    "entropy_estimation.likelihood_lower_bound.bound": 1e-9,
}
_TABLES = ("scale_table", "quantized_cdf", "cdf_length", "offset")


def _formula_value(key: str, shape, gain: float) -> torch.Tensor:
    if key.startswith(_TABLES):
        return torch.empty(0)
    if key in _CONSTANTS:
        return torch.full(shape, _CONSTANTS[key])
    if key.startswith("adaptive_params_list."):
        return torch.ones(shape)
    if len(shape) >= 2:
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        w = gain * rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))
        return torch.from_numpy(w.astype(np.float32))
    return torch.zeros(shape)


def official_shapes(model: str) -> dict:
    return json.loads((DATA / "official-hpcm-state-dict.json").read_text())[model]


def official_vector(name: str) -> dict:
    """An official test vector shipped in tests/data (sizes and hashes of the official output)."""
    return json.loads((DATA / name).read_text())


def astronaut() -> torch.Tensor:
    """scikit-image's astronaut (512x512 RGB, shipped with the package) as the vectors read it:
    float32 in [0, 1], shape (1, 3, 512, 512)."""
    pixels = skimage.data.astronaut()
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float().div(255)


def official_formula_state_dict(model: str = "HPCM_Base", gain: float = 0.7) -> dict:
    """The state dict the test vectors were made with, keys and shapes as the official model."""
    return {key: _formula_value(key, shape, gain) for key, shape in official_shapes(model).items()}


def formula_model(model: str, name: str, gain: float = 0.7):
    """``hpcm.build_model(name)`` holding the formula weights of the official ``model``, written
    into the parameters one tensor at a time (HPCM_1B's state dict alone is 4 GB). Built on the
    meta device, so that no time goes into a random initialisation the formula overwrites; its
    few buffers (constants, empty entropy tables) are those of a fresh ``tiny`` model."""
    shapes = official_shapes(model)
    ours = convert_official_state_dict({k: k for k in shapes})  # our key -> official key
    with torch.device("meta"):
        net = hpcm.build_model(name)
    net.to_empty(device="cpu")
    params = dict(net.named_parameters())
    assert set(params) == set(ours), set(params) ^ set(ours)
    buffers, fresh = dict(net.named_buffers()), dict(hpcm.build_model("tiny").named_buffers())
    assert set(buffers) == set(fresh), set(buffers) ^ set(fresh)
    with torch.no_grad():
        for key, official in ours.items():
            params[key].copy_(_formula_value(official, shapes[official], gain))
        for key, value in fresh.items():
            buffers[key].set_(value)
    return net.eval()
