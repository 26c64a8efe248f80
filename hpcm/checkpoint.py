"""Checkpoint files: atomic writes, safe loading, and the official HPCM key layout."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Save with ``torch.save`` so that ``path`` is either the old file or the complete new one.

    The object is written to a temporary file in the same directory, flushed to disk and renamed
    over ``path`` (rename is atomic on POSIX), so an interruption never leaves a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint without executing arbitrary pickled code (``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


# Official HPCM key prefixes -> this project's (longest match first). Inside blocks the
# official names (branch.N, pconv, conv_q ...) are kept, so prefixes are all that differ.
_OFFICIAL_PREFIXES = [
    ("g_a.branch.", "g_a."),
    ("g_s.branch.", "g_s."),
    ("h_a.branch.", "h_a."),
    ("h_s.branch.", "h_s."),
    ("y_spatial_prior_adaptor_list_s1.0.", "adaptors.0."),
    *((f"y_spatial_prior_adaptor_list_s2.{j}.", f"adaptors.{1 + j}.") for j in range(3)),
    *((f"y_spatial_prior_adaptor_list_s3.{j}.", f"adaptors.{4 + j}.") for j in range(6)),
    ("y_spatial_prior_s1_s2.branch_1.", "priors.0.trunk."),
    ("y_spatial_prior_s1_s2.branch_2.", "priors.0.head."),
    ("y_spatial_prior_s3.branch_1.", "priors.1.trunk."),
    ("y_spatial_prior_s3.branch_2.", "priors.1.head."),
    ("adaptive_params_list.", "adaptive_params."),
    ("attn_s1.", "attn.0."),
    ("attn_s2.", "attn.1."),
    ("attn_s3.", "attn.2."),
    ("context_net.", "context_net."),
    ("means_hyper", "z_means"),
    ("scales_hyper", "z_scales"),
]
# Official buffers that the project rebuilds (coding tables) or holds as constants.
_OFFICIAL_SKIPPED = (
    "scale_table",
    "quantized_cdf_z",
    "cdf_length_z",
    "offset_z",
    "quantized_cdf_y",
    "cdf_length_y",
    "offset_y",
    "entropy_estimation.",
)


def is_official_state_dict(state_dict: dict) -> bool:
    return "means_hyper" in state_dict and any(k.startswith("g_a.branch.") for k in state_dict)


def convert_official_state_dict(state_dict: dict) -> dict:
    """Rename an official HPCM state dict to this project's layout (tables are dropped and
    rebuilt by ``update()``). Unknown keys raise ``KeyError`` naming them."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        if key.startswith(_OFFICIAL_SKIPPED):
            continue
        for old, new in _OFFICIAL_PREFIXES:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"not an HPCM key: {', '.join(unknown[:5])}")
    return out
