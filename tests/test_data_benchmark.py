"""benchmarks/data.py: one short run times old, new and prepared samples of a folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data.py"


def test_one_run_times_every_variant(tmp_path: Path) -> None:
    bench = load_script(SCRIPT, "data_benchmark")
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, suffix in enumerate(["png", "jpg"]):
        pixels = rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.{suffix}")
    out = tmp_path / "rows.json"
    argv = ["--folders", str(folder), "--samples", "3", "--rounds", "1", "--json", str(out)]
    assert bench.main(argv) == 0  # also checks that the three variants give the same crops
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["old", "new", "prepared"]
    assert rows[0]["ratio"] == 1.0 and all(r["images_per_s"] > 0 for r in rows)
    assert bench.main(["--folders", str(tmp_path / "nowhere")]) == 1
