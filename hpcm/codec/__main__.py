"""``python -m hpcm.codec encode IMAGE OUT.hpcm --checkpoint CKPT`` and
``python -m hpcm.codec decode OUT.hpcm IMAGE.png``: real bitstreams from the command line.

The encoder reads any image :func:`hpcm.codec.images.read_pixels` accepts (gray, 16-bit, alpha
composited onto white, EXIF-rotated: its output line says which) and codes it as RGB in [0, 1];
the decoder writes an 8-bit RGB image, whatever the input was (the .hpcm format stores no mode).

Every failure, whatever a file holds, is one ``error: ...`` line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path, PurePath

import torch

from hpcm.codec.bitstream import (
    DEFAULT_MAX_PIXELS,
    CodecError,
    Encoded,
    decode_image,
    encode_image,
)
from hpcm.codec.checkpoint import PRETRAINED_PREFIX, CheckpointError, load_model
from hpcm.codec.images import ImageError, read_pixels, to_tensor, write_image
from hpcm.device import DeviceError, resolve_device
from hpcm.files import atomic_write


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hpcm.codec", description="Encode an image to a .hpcm file, or decode one."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="image -> .hpcm file")
    enc.add_argument("image")
    enc.add_argument("output")
    enc.add_argument("--checkpoint", required=True, help="project or official HPCM checkpoint")
    enc.add_argument(
        "--model", help="model name for official checkpoints (default: the one the keys show)"
    )
    enc.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    dec = sub.add_parser("decode", help=".hpcm file -> PNG")
    dec.add_argument("input")
    dec.add_argument("output")
    dec.add_argument(
        "--checkpoint",
        help="default: the checkpoint file named in the .hpcm file, looked up beside it",
    )
    dec.add_argument("--model", help="model name for official checkpoints")
    dec.add_argument("--device", help="must match the encoder's device type")
    dec.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse files whose image, padded to multiples of 256, has more pixels "
        "(default %(default)s: 8K photos pass)",
    )
    return parser


def find_checkpoint(encoded: Encoded, input_path: Path, given: str | None) -> str:
    """``--checkpoint`` when given, else the file the header names, beside the .hpcm file
    (version 1 files name a full path: that path is tried after the file beside); a shipped
    ``pretrained:NAME`` is resolved by the loader wherever the .hpcm file is."""
    if given:
        return given
    if not encoded.checkpoint:
        raise CodecError("no checkpoint named in the file: pass --checkpoint")
    if encoded.checkpoint.startswith(PRETRAINED_PREFIX):
        return encoded.checkpoint
    # Either separator: a version 1 file may come from another operating system.
    name = PurePath(encoded.checkpoint.replace("\\", "/")).name
    beside = input_path.parent / name
    if name and beside.is_file():
        return str(beside)
    if encoded.version == 1 and Path(encoded.checkpoint).is_file():
        return encoded.checkpoint
    raise CodecError(
        f"checkpoint {name!r} named in the file is not beside it ({beside}): pass --checkpoint"
    )


def _encode(args: argparse.Namespace) -> None:
    pixels, info = read_pixels(args.image)
    x = to_tensor(pixels)
    model = load_model(args.checkpoint, name=args.model, device=resolve_device(args.device))
    start = time.perf_counter()
    encoded = encode_image(model, x, Path(args.checkpoint).name)
    atomic_write(args.output, encoded.to_bytes())  # never a partial .hpcm file
    h, w = encoded.size
    print(
        f"{args.image}: {h}x{w} {info.notes()}, {encoded.num_bytes} bytes, "
        f"{encoded.num_bytes * 8 / (h * w):.4f} bpp, {time.perf_counter() - start:.2f} s"
    )


def _decode(args: argparse.Namespace) -> None:
    if args.max_pixels < 1:
        raise CodecError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    try:
        data = Path(args.input).read_bytes()
    except OSError as e:
        raise CodecError(f"cannot read {args.input}: {e.strerror}") from None
    encoded = Encoded.from_bytes(data)
    ckpt = find_checkpoint(encoded, Path(args.input), args.checkpoint)
    name = args.model or encoded.model_name
    model = load_model(ckpt, name=name, device=resolve_device(args.device))
    start = time.perf_counter()
    x_hat = decode_image(model, encoded, args.max_pixels)
    write_image(x_hat, args.output)
    print(f"{args.output}: {time.perf_counter() - start:.2f} s")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with torch.inference_mode():
            (_encode if args.command == "encode" else _decode)(args)
    except (CodecError, CheckpointError, DeviceError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
