"""Peak GPU memory of training steps against the estimate the trainer logs (hpcm.train.memory).

    python benchmarks/gpu_memory.py --models hpcm_base hpcm_large hpcm_1b --batch-size 8
    python benchmarks/gpu_memory.py --device cpu --models tiny --batch-size 1   # checks the script

Each model is built as ``train.py`` builds it (``build_trainer``, Adam, 256x256 crops, one
process), in IEEE fp32 and with bf16 autocast, and takes ``--steps`` training steps on one batch.
Reported per row: the estimate's total (parameters, gradients, Adam's two moments, the
activations autograd saves for ``--batch-size`` images), the peak of
``torch.cuda.max_memory_allocated`` over the steps (what PyTorch's allocator handed out, its
cache not counted) and their ratio. On the CPU the peak is not measured (the estimate alone).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))

GIB = 1024**3


def measure_row(model: str, bf16: bool, args: argparse.Namespace) -> dict:
    import torch
    from train_step import compose

    from hpcm.train.build import build_trainer
    from hpcm.train.data import as_size
    from hpcm.train.memory import estimate_memory

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose(
            [
                f"model={model}",
                "logger=none",
                f"trainer.device={args.device}",
                "trainer.progress_bar=false",
                f"trainer.autocast_bf16={str(bf16).lower()}",
                f"data.batch_size={args.batch_size}",
                f"data.crop_size={args.crop}",
                f"data.samples_per_epoch={args.batch_size}",
                f"paths.run_dir={run_dir}",
            ]
        )
        trainer = build_trainer(cfg)
        estimate = estimate_memory(
            trainer.model, as_size(cfg.data.crop_size), trainer.speed.autocast(device)
        )
        total = estimate.total(args.batch_size)
        batch = next(iter(trainer.loaders.train)).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.steps):
            trainer.train_step(batch)
        peak = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
        del trainer, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "model": model,
        "precision": "bf16" if bf16 else "fp32",
        "batch": args.batch_size,
        "estimate_gib": total / GIB,
        "activations_per_image_gib": estimate.activations_per_image / GIB,
        "activations_per_step_gib": estimate.activations_per_step / GIB,
        "peak_gib": None if peak is None else peak / GIB,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["hpcm_base", "hpcm_large", "hpcm_1b"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    import torch

    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    precisions = [False, True] if args.device.startswith("cuda") else [False]
    rows = []
    header = ("model", "precision", "batch", "estimate GiB", "peak GiB", "peak/est")
    print("{:<12} {:<9} {:>5} {:>12} {:>9} {:>8}".format(*header))
    for model in args.models:
        for bf16 in precisions:
            row = measure_row(model, bf16, args)
            rows.append(row)
            peak = row["peak_gib"]
            ratio = "" if peak is None else f"{peak / row['estimate_gib']:8.2f}"
            peak_text = "n/a" if peak is None else f"{peak:.2f}"
            print(
                f"{row['model']:<12} {row['precision']:<9} {row['batch']:>5} "
                f"{row['estimate_gib']:>12.2f} {peak_text:>9} {ratio}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
