"""``python -m hpcm.codec encode IMAGE OUT.hpcm --checkpoint CKPT`` and
``python -m hpcm.codec decode OUT.hpcm IMAGE.png``: real bitstreams from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from hpcm.codec.bitstream import CodecError, Encoded, decode_image, encode_image
from hpcm.codec.checkpoint import CheckpointError, load_model
from hpcm.codec.images import ImageError, read_image, write_image
from hpcm.device import DeviceError, resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpcm.codec", description="Encode an image to a .hpcm file, or decode one."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="image -> .hpcm file")
    enc.add_argument("image")
    enc.add_argument("output")
    enc.add_argument("--checkpoint", required=True, help="project or official HPCM checkpoint")
    enc.add_argument("--model", help="model name of a state dict (default: found from the weights)")
    enc.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    dec = sub.add_parser("decode", help=".hpcm file -> PNG")
    dec.add_argument("input")
    dec.add_argument("output")
    dec.add_argument("--checkpoint", help="default: the checkpoint path stored at encoding")
    dec.add_argument("--model", help="model name for official checkpoints")
    dec.add_argument("--device", help="must match the encoder's device type")
    args = parser.parse_args(argv)
    try:
        with torch.inference_mode():
            if args.command == "encode":
                x = read_image(args.image)
                ckpt = str(Path(args.checkpoint).resolve())
                model = load_model(ckpt, name=args.model, device=resolve_device(args.device))
                start = time.perf_counter()
                encoded = encode_image(model, x, ckpt)
                Path(args.output).write_bytes(encoded.to_bytes())
                h, w = encoded.size
                print(
                    f"{args.image}: {h}x{w}, {encoded.num_bytes} bytes, "
                    f"{encoded.num_bytes * 8 / (h * w):.4f} bpp, "
                    f"{time.perf_counter() - start:.2f} s"
                )
            else:
                try:
                    data = Path(args.input).read_bytes()
                except OSError as e:
                    raise CodecError(f"cannot read {args.input}: {e.strerror}") from None
                encoded = Encoded.from_bytes(data)
                ckpt = args.checkpoint or encoded.checkpoint
                if not ckpt:
                    raise CodecError("no checkpoint stored in the file: pass --checkpoint")
                name = args.model or encoded.model_name
                model = load_model(ckpt, name=name, device=resolve_device(args.device))
                start = time.perf_counter()
                x_hat = decode_image(model, encoded)
                write_image(x_hat, args.output)
                print(f"{args.output}: {time.perf_counter() - start:.2f} s")
    except (CodecError, CheckpointError, DeviceError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
