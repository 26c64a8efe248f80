"""A clone without the team's shared folder still runs the byte-exact official-vector tests: the
facts they need ship in tests/data, the image with scikit-image; only the Kodak tests skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELF_CONTAINED = [
    "test_official_layout_maps_onto_every_parameter[HPCM_Base]",
    "test_official_layout_maps_onto_every_parameter[HPCM_1B]",
    "test_hpcm_1b_layout_is_refused_by_another_model_in_one_line",
    "test_released_checkpoints_without_adaptive_params_load",
    "test_official_vectors_byte_exact",
]
NEEDS_KODAK = "test_tiny_round_trip_on_kodak_photos"


@pytest.mark.slow
def test_codec_vectors_run_without_the_shared_folder(tmp_path: Path) -> None:
    ids = [f"tests/test_codec.py::{name}" for name in [*SELF_CONTAINED, NEEDS_KODAK]]
    env = {**os.environ, "HPCM_SHARED": str(tmp_path / "no-shared")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-n", "0", "-p", "no:cacheprovider", *ids],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out[-3000:]
    for name in SELF_CONTAINED:
        assert f"PASSED tests/test_codec.py::{name}" in out, out[-3000:]
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]  # the Kodak one
    reason = f"needs the Kodak images: {tmp_path / 'no-shared' / 'data' / 'kodak'} not found"
    assert len(skipped) == 1 and reason in skipped[0], out[-3000:]
