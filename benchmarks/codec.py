"""Codec speed: forward, compress and decompress of a model on one image (CPU or CUDA).

    python benchmarks/codec.py --image KODAK_DIR/kodim23.png --threads 2
    python benchmarks/codec.py --model tiny,hpcm_base,hpcm_large,hpcm_phi_context,hpcm_1b \
        --threads 2 --forward-256-only      # the speed row of the README's model table

Prints medians of ``--repeat`` runs after one warm-up run. Weights are random with a gain that
makes the latents non-trivial (about 0.4 bpp on Kodak for hpcm_base), so entropy coding does
real work; trained weights code fewer symbols per image and run faster.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import hpcm
from hpcm.codec import read_image


def non_trivial_weights(
    model: torch.nn.Module,
    gain: float = 0.7,
    seed: int = 0,
    skip: tuple[str, ...] = ("adaptive_params", "z_"),
) -> None:
    """Gaussian weights with std ``gain / sqrt(fan_in)`` and zero biases; parameters whose
    names start with ``skip`` (by default our adaptive gains and z prior) keep their values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(skip):
                continue
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * gain / fan_in**0.5)
            else:
                p.zero_()


def timed(fn, repeat: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, args: argparse.Namespace, x: torch.Tensor, sync) -> list[tuple]:
    """Timings of one model: the 256x256 forward, and unless ``--forward-256-only`` the forward,
    compress and decompress of ``x``."""
    model = hpcm.build_model(name)
    non_trivial_weights(model)
    model.set_official_numerics(args.official_numerics)
    model.to(x.device).eval().update()
    small = x[..., :256, :256]
    rows = []
    with torch.inference_mode():
        rows.append(("forward 256x256", timed(lambda: model(small), args.repeat, sync)))
        if args.forward_256_only:
            return rows
        h, w = x.shape[-2:]
        rows.append((f"forward {h}x{w}", timed(lambda: model(x), args.repeat, sync)))
        out = model.compress(x)
        rows.append((f"compress {h}x{w}", timed(lambda: model.compress(x), args.repeat, sync)))
        decode = lambda: model.decompress(out["strings"], out["shape"])
        rows.append((f"decompress {h}x{w}", timed(decode, args.repeat, sync)))
    nbytes = sum(len(s[0]) for s in out["strings"])
    rows.append(("bpp", nbytes * 8 / (h * w)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="hpcm_base", help="a model, or several: a,b,c")
    parser.add_argument("--image", help="image to code (default: random 512x768)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--official-numerics",
        action="store_true",
        help="oneDNN convolutions in the entropy path, as the official code",
    )
    parser.add_argument(
        "--forward-256-only", action="store_true", help="time only the 256x256 forward"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = read_image(args.image) if args.image else torch.rand(1, 3, 512, 768)
    x = x[..., : x.shape[-2] // 256 * 256, : x.shape[-1] // 256 * 256].to(device)
    print(
        f"on {device} ({args.threads} threads, torch {torch.__version__}), seconds, "
        f"median of {args.repeat} after a warm-up"
    )
    for name in args.model.split(","):
        rows = measure(name, args, x, sync)  # one model in memory at a time
        print(f"{name}: " + ", ".join(f"{what} {value:.3f}" for what, value in rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
