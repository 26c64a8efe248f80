"""Do a caller's numeric settings change the bitstreams on this device?

    python benchmarks/coding_check.py --device cuda      # part of benchmarks/gpu_check.sh

Encodes one image with PyTorch's default settings, then again with ``cudnn.benchmark=True``,
``set_float32_matmul_precision("medium")`` (TF32 on CUDA) and bf16 autocast around the call,
and decodes each stream under the other settings. ``compress``/``decompress`` pin their own
numerics (:func:`hpcm.codec.numerics.coding_numerics`), so the streams must be identical and
every decode must reproduce the encoder's symbols (``symbol_crc``). Exit status 1 otherwise.
Random weights of the tiny model, scaled so that the latents are not trivial (the model of the
codec tests and the fuzzer: ``fuzz_bitstreams.tiny_model``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def caller_settings(device_type: str):
    """What a training script might have set: autotuning, TF32/bf16 matmuls, autocast."""
    import torch

    saved = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("medium")
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.set_float32_matmul_precision(saved[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=512, help="image side (multiple of 256)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch
    from fuzz_bitstreams import tiny_model  # this folder: sys.path[0] of a script

    device = torch.device(args.device)
    model = tiny_model(seed=0, device=device)
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    x = torch.nn.functional.avg_pool2d(x, 5, 1, 2).to(device)  # some structure to code

    plain = model.compress(x)
    with caller_settings(device.type):
        tuned = model.compress(x)
        decoded_tuned = model.decompress(plain["strings"], plain["shape"])
    decoded_plain = model.decompress(tuned["strings"], tuned["shape"])
    checks = {
        "same streams": tuned["strings"] == plain["strings"],
        "decode under caller settings": decoded_tuned["symbol_crc"] == plain["symbol_crc"],
        "decode with defaults": decoded_plain["symbol_crc"] == tuned["symbol_crc"],
        "same reconstruction": torch.equal(decoded_tuned["x_hat"], decoded_plain["x_hat"]),
    }
    size = sum(len(s) for streams in plain["strings"] for s in streams)
    print(
        f"coding check on {device} ({size} bytes): "
        + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in checks.items())
    )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
