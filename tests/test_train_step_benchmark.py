"""benchmarks/train_step.py: ``--help`` runs nothing; one short run measures every variant."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from script_modules import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_step.py"


def load_benchmark():
    return load_script(SCRIPT, "train_step_benchmark")


def test_help_runs_nothing() -> None:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPT), "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert "OPTIMIZER[:MODE][+bf16][+cl][+nchw][+compile]" in done.stdout
    assert " torch" not in done.stderr  # -X importtime lists every import: torch is not one
    assert time.perf_counter() - start < 30


def test_variant_names_become_overrides() -> None:
    bench = load_benchmark()
    variant = bench.parse_variant("balanced:subbatch+bf16+cl")
    assert variant.overrides == [
        "optimizer=balanced",
        "optimizer.balancer.update_mode=subbatch",
        "trainer.autocast_bf16=true",
        "trainer.channels_last=true",
    ]
    assert bench.parse_variant("adam").overrides == ["optimizer=adam"]


def test_one_run_times_every_variant(tmp_path: Path) -> None:
    bench = load_benchmark()
    out = tmp_path / "result.json"
    argv = ["--batch-size", "1", "--steps", "2", "--warmup", "0", "--json", str(out)]
    argv += ["--variants", "adam", "balanced:next_batch", "balanced:subbatch"]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["adam", "balanced:next_batch", "balanced:subbatch"]
    assert rows[0]["ratio"] == rows[0]["paired_ratio"] == 1.0
    assert all(r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"] for r in rows)
    assert all(r["first_s"] > 0 and r["compile_s"] is None for r in rows)  # nothing compiled
    assert rows[0]["images_per_s"] == pytest.approx(1000.0 / rows[0]["median_ms"])  # batch 1


def test_thread_options_parse_and_bad_ones_are_refused() -> None:
    bench = load_benchmark()
    variant = bench.parse_variant("adam+nchw+t1")
    assert (variant.overrides, variant.threads) == (
        ["optimizer=adam", "trainer.channels_last=false"],
        1,
    )
    assert bench.parse_variant("adam").threads is None
    for bad in ("adam+t0", "adam+tx", "adam+fast"):
        with pytest.raises(SystemExit, match="unknown option"):
            bench.parse_variant(bad)


def test_profile_lists_the_top_operators_of_each_variant(tmp_path: Path) -> None:
    import torch

    bench = load_benchmark()
    out = tmp_path / "result.json"
    threads = torch.get_num_threads()
    argv = ["--batch-size", "1", "--steps", "1", "--warmup", "0", "--json", str(out)]
    argv += ["--variants", "adam", "adam+t1", "--profile", "1", "--profile-rows", "4"]
    assert bench.main(argv) == 0
    assert torch.get_num_threads() == threads  # the +t1 variant's setting does not leak
    profiles = json.loads(out.read_text())["profiles"]
    assert list(profiles) == ["adam", "adam+t1"]
    for ops in profiles.values():
        assert len(ops) == 4
        times = [op["ms_per_step"] for op in ops]
        assert times == sorted(times, reverse=True) and times[-1] > 0
        assert 0 < sum(op["share"] for op in ops) <= 1
        assert any(op["op"].startswith("aten::") for op in ops)
