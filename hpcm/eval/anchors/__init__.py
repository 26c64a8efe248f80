"""Published rate-distortion points (HPCM, VTM), shipped as CompressAI-style JSON curves.

Each ``*.json`` file next to this module holds one anchor set in the format that CompressAI's
``eval_model`` writes (``{"name", "description", "results": {"bpp", <metric>...}}``); the
``description`` names the source file and commit the numbers were read from (lyq133/LIC-HPCM for
HPCM; for VTM: InterDigitalInc/CompressAI on Kodak, google-deepmind/c3_neural_compression on CLIC
Pro Valid, duanzhiihao/lossy-vae on Tecnick) and, for a traditional codec, its version.

HPCM names are ``<model>/<dataset>`` for the MSE-optimized models (``psnr-rgb``) and
``<model>/<dataset>-msssim`` for the MS-SSIM-optimized models (``ms-ssim-rgb`` and
``ms-ssim-db``), because the two model families sit at different rates and cannot share one
``bpp`` list. ``vtm/<dataset>`` carries every metric its source publishes on one list (PSNR and
MS-SSIM on Kodak, PSNR only on CLIC Pro Valid and Tecnick).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

MSSSIM_SUFFIX = "-msssim"


@cache
def _index() -> dict[str, str]:
    """Map anchor name -> file name, read once from the package data."""
    index: dict[str, str] = {}
    for entry in resources.files(__name__).iterdir():
        if entry.name.endswith(".json"):
            index[json.loads(entry.read_text(encoding="utf-8"))["name"]] = entry.name
    return index


def anchor_names() -> list[str]:
    """All shipped anchor names, sorted."""
    return sorted(_index())


def _read(name: str) -> dict[str, Any]:
    # A fresh parse per call, so callers may mutate what they get.
    text = resources.files(__name__).joinpath(_index()[name]).read_text(encoding="utf-8")
    return json.loads(text)


def load_anchor(name: str, metric_key: str | None = None) -> dict[str, Any]:
    """Return the anchor curve ``name`` as a CompressAI-style dict.

    With ``metric_key`` (e.g. ``"ms-ssim-db"``), a name whose curve lacks that metric resolves to
    its ``-msssim`` sibling when that one has it, so ``hpcm-base/kodak`` serves both metrics.
    Raises ``KeyError`` with the list of known names when ``name`` is unknown.
    """
    if name not in _index():
        raise KeyError(f"unknown anchor {name!r}; known: {', '.join(anchor_names())}")
    data = _read(name)
    sibling = name + MSSSIM_SUFFIX
    if metric_key and metric_key not in data["results"] and sibling in _index():
        other = _read(sibling)
        if metric_key in other["results"]:
            return other
    return data
