"""Fuzz the ``.hpcm`` decoder: changed files must be refused in one line or decode exactly.

    python benchmarks/fuzz_bitstreams.py --cases 6000 --seed 1

Files of a tiny model (random weights with a gain, so that the streams are not trivial) are
changed in six families of ways, each case decoded with a per-case time limit:

- ``byte_flip``, ``truncate``, ``insert``, ``random_file``: what storage and transfer do;
- ``payload``: the streams changed (bytes, lengths, swapped, replaced) with the checksums
  recomputed, as a buggy writer would;
- ``header``: one header field changed (sizes, z shape, stream lengths, names, version,
  fingerprint, symbol checksum) with the checksums recomputed.

Outcomes per case: ``refused`` (an ``error: ...`` line, i.e. a :class:`CodecError`),
``decoded`` (the image equals the decoding of the unchanged file), and the failures ``crash``
(any other exception), ``hang`` (over ``--timeout`` seconds) and ``wrong`` (an image that
differs). Every ``--cli-every``-th case runs the real command line (``python -m hpcm.codec
decode``, in process) instead of the library calls. Prints the counts per family as JSON; the
exit status is 1 when any failure occurred. The test suite runs a seeded subset.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import signal
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

import hpcm
from hpcm.codec import CodecError, Encoded, decode_image, encode_image
from hpcm.codec.__main__ import main as codec_main
from hpcm.codec.bitstream import HEADER_FIELDS, MAGIC
from hpcm.codec.checkpoint import atomic_torch_save, model_checkpoint
from hpcm.codec.images import read_image, write_image
from hpcm.codec.model import z_size

FAMILIES = ("byte_flip", "truncate", "insert", "random_file", "payload", "header")
FAILURES = ("crash", "hang", "wrong")
# Image sizes of the coded originals (two padded sizes, so a size field can move between them).
SIZES = ((48, 40), (20, 270))
CHECKPOINT = "tiny.pth.tar"


class CaseTimeout(Exception):
    pass


# -- the originals ---------------------------------------------------------------------------------
def tiny_model(seed: int = 1, device: str | torch.device = "cpu") -> hpcm.HPCM:
    """The tiny model of the codec tests (``tests/test_codec.py``): random weights of ``seed``,
    the analysis transform's doubled so that the latents are not all zero, coding tables built
    on ``device``. Also used by ``benchmarks/coding_check.py`` and the bitstream-safety tests."""
    torch.manual_seed(seed)
    model = hpcm.build_model("tiny")
    with torch.no_grad():
        for p in model.g_a.parameters():
            p.mul_(2.0)
    model.to(device).eval().update()
    return model


def test_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth random image with some texture, on the 8-bit grid."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=gen)
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    x = (x + 0.1 * torch.rand(1, 3, h, w, generator=gen)).clamp(0, 1)
    return x.mul(255).round().div(255)


# -- writing files field by field (no checks: the fuzzer writes what a buggy writer would) ----------
def pack(fields: dict) -> bytes:
    """A file from ``fields`` (those of :class:`Encoded` plus ``version`` and optional
    ``y_len``/``z_len`` overrides), with valid header and payload checksums."""
    name, ckpt = fields["name"], fields["ckpt"]
    y, z = fields["y"], fields["z"]
    head = MAGIC + bytes([fields["version"], len(name)]) + name
    head += struct.pack(">H", len(ckpt)) + ckpt
    head += HEADER_FIELDS.pack(
        fields["fingerprint"],
        *fields["size"],
        *fields["z_shape"],
        fields["symbol_crc"],
        fields.get("y_len", len(y)),
        fields.get("z_len", len(z)),
        zlib.crc32(y + z),
    )
    return head + struct.pack(">I", zlib.crc32(head)) + y + z


def fields_of(enc: Encoded) -> dict:
    return {
        "version": enc.version,
        "name": enc.model_name.encode(),
        "ckpt": enc.checkpoint.encode(),
        "fingerprint": enc.fingerprint,
        "size": enc.size,
        "z_shape": enc.z_shape,
        "symbol_crc": enc.symbol_crc,
        "y": enc.y,
        "z": enc.z,
    }


# -- the six families ------------------------------------------------------------------------------
def byte_flip(rng: random.Random, data: bytes, enc: Encoded) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= rng.randint(1, 255)
    return bytes(out)


def truncate(rng: random.Random, data: bytes, enc: Encoded) -> bytes:
    return data[: rng.randrange(len(data))]


def insert(rng: random.Random, data: bytes, enc: Encoded) -> bytes:
    pos = rng.randrange(len(data) + 1)
    return data[:pos] + rng.randbytes(rng.randint(1, 16)) + data[pos:]


def random_file(rng: random.Random, data: bytes, enc: Encoded) -> bytes:
    body = rng.randbytes(rng.randint(0, 2 * len(data)))
    return (MAGIC + bytes([rng.choice((1, 2))]) + body) if rng.random() < 0.7 else body


def _change_stream(rng: random.Random, s: bytes) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:  # flipped bytes
        out = bytearray(s)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= rng.randint(1, 255)
        return bytes(out)
    if kind == 1:  # cut, often to whole words (what the decoder accepts)
        cut = rng.randrange(len(s))
        return s[: cut - cut % 4] if rng.random() < 0.7 else s[:cut]
    if kind == 2:  # extended
        return s + rng.randbytes(4 * rng.randint(1, 64))
    if kind == 3:  # replaced by random words
        return rng.randbytes(4 * rng.randint(2, max(2, len(s) // 2)))
    return bytes(4 * rng.randint(2, 8)) if rng.random() < 0.5 else b"\xff" * len(s)


def payload(rng: random.Random, data: bytes, enc: Encoded) -> bytes:
    f = fields_of(enc)
    if rng.random() < 0.15:
        f["y"], f["z"] = f["z"], f["y"]
    else:
        for part in rng.sample(("y", "z"), rng.randint(1, 2)):
            f[part] = _change_stream(rng, f[part])
    return pack(f)


def _edge(rng: random.Random, value: int, top: int) -> int:
    return rng.choice((0, 1, value - 1, value + 1, top, rng.randint(0, top)))


def header(rng: random.Random, data: bytes, enc: Encoded) -> bytes:
    f, (h, w), (zh, zw) = fields_of(enc), enc.size, enc.z_shape
    field = rng.choice(
        ("size", "size_and_z", "z", "split", "lengths", "name", "ckpt", "fp", "crc", "version")
    )
    if field == "size":  # within or across the padding class, z unchanged
        f["size"] = (_edge(rng, h, 65535), w) if rng.random() < 0.5 else (h, _edge(rng, w, 65535))
    elif field == "size_and_z":  # a consistent header that asks for other (or huge) work
        f["size"] = (rng.randint(1, 65535), rng.randint(1, 65535))
        if rng.random() < 0.5:
            f["size"] = (rng.randint(1, 600), rng.randint(1, 600))
        f["z_shape"] = z_size(*f["size"])
    elif field == "z":
        f["z_shape"] = (
            (_edge(rng, zh, 65535), zw) if rng.random() < 0.5 else (zh, _edge(rng, zw, 65535))
        )
    elif field == "split":  # the same payload bytes, cut at another place between y and z
        both, cut = f["y"] + f["z"], rng.randrange(len(f["y"]) + len(f["z"]) + 1)
        f["y"], f["z"] = both[:cut], both[cut:]
    elif field == "lengths":  # lengths that disagree with the payload
        f["y_len"] = _edge(rng, len(f["y"]), 2**32 - 1)
    elif field == "name":
        f["name"] = rng.choice((b"", b"hpcm_base", b"tiny\n", b"\xff\xfe", rng.randbytes(8)))
    elif field == "ckpt":
        f["ckpt"] = rng.choice(
            (b"", b"../tiny.pth.tar", b"/etc/passwd", b".", b"other.pth.tar", rng.randbytes(6))
        )
    elif field == "fp":
        f["fingerprint"] = rng.getrandbits(32)
    elif field == "crc":
        f["symbol_crc"] = rng.getrandbits(32)
    else:
        f["version"] = rng.choice((0, 1, 3, 255))
    return pack(f)


MUTATORS: dict[str, Callable[[random.Random, bytes, Encoded], bytes]] = {
    "byte_flip": byte_flip,
    "truncate": truncate,
    "insert": insert,
    "random_file": random_file,
    "payload": payload,
    "header": header,
}


# -- running the cases -----------------------------------------------------------------------------
def _alarm(signum, frame):
    raise CaseTimeout


def decode_library(model, data: bytes, max_pixels: int, workdir: Path) -> torch.Tensor | None:
    """None when refused (CodecError), else the image; anything else propagates."""
    try:
        return decode_image(model, Encoded.from_bytes(data), max_pixels)
    except CodecError:
        return None


def decode_cli(model, data: bytes, max_pixels: int, workdir: Path) -> torch.Tensor | None:
    """The command line in process: exit 1 with one ``error:`` line, or 0 and a PNG."""
    src, out = workdir / "case.hpcm", workdir / "case.png"
    src.write_bytes(data)
    out.unlink(missing_ok=True)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = codec_main(["decode", str(src), str(out), "--max-pixels", str(max_pixels)])
    lines = err.getvalue().strip().splitlines()
    if rc == 1 and len(lines) == 1 and lines[0].startswith("error: ") and not out.exists():
        return None
    if rc != 0 or lines or not out.exists():
        raise RuntimeError(f"exit status {rc}, stderr {err.getvalue()!r}")
    return read_image(out)


def run_case(decode, model, data: bytes, expected, max_pixels, workdir, timeout):
    """``(outcome, detail, seconds)`` of decoding ``data`` with ``decode``."""
    detail, start = "", time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        image = decode(model, data, max_pixels, workdir)
        outcome = "refused" if image is None else "decoded"
        if image is not None and not torch.equal(image, expected):
            outcome = "wrong"
    except CaseTimeout:
        outcome = "hang"
    except Exception as error:  # noqa: BLE001 - every other exception is a crash
        outcome, detail = "crash", f"{type(error).__name__}: {error}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    elapsed = time.perf_counter() - start
    if elapsed > timeout:  # also a C call that the alarm could not interrupt
        outcome = "hang"
    return outcome, detail or f"{elapsed:.2f} s", elapsed


def coded_originals(model, workdir: Path) -> list[tuple]:
    """``(file bytes, Encoded, decoded image, its 8-bit PNG)`` of each of :data:`SIZES`."""
    atomic_torch_save(model_checkpoint(model), workdir / CHECKPOINT)
    originals = []
    for i, (h, w) in enumerate(SIZES):
        enc = encode_image(model, test_image(h, w, seed=i), CHECKPOINT)
        reference = decode_image(model, enc)
        write_image(reference, workdir / "reference.png")  # the CLI's 8-bit output
        originals.append((enc.to_bytes(), enc, reference, read_image(workdir / "reference.png")))
    return originals


def run(cases: int, seed: int, timeout: float, max_pixels: int, cli_every: int) -> dict:
    torch.set_num_threads(1)  # cases are small; one thread is steadier on a loaded machine
    model, rng = tiny_model(), random.Random(seed)
    counts = {family: Counter() for family in FAMILIES}
    examples: list[str] = []
    slowest = 0.0
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        workdir = Path(tmp)
        originals = coded_originals(model, workdir)
        previous = signal.signal(signal.SIGALRM, _alarm)
        try:
            for i in range(cases):
                family = FAMILIES[i % len(FAMILIES)]
                data, enc, reference, reference_png = originals[rng.randrange(len(originals))]
                changed = MUTATORS[family](rng, data, enc)
                cli = cli_every > 0 and i % cli_every == 0
                decode, expected = (
                    (decode_cli, reference_png) if cli else (decode_library, reference)
                )
                outcome, detail, elapsed = run_case(
                    decode, model, changed, expected, max_pixels, workdir, timeout
                )
                slowest = max(slowest, elapsed)
                counts[family][outcome] += 1
                if outcome in FAILURES and len(examples) < 10:
                    examples.append(f"case {i} ({family}, cli={cli}): {outcome}: {detail}")
        finally:
            signal.signal(signal.SIGALRM, previous)
    return {
        "cases": cases,
        "seed": seed,
        "counts": {f: dict(c) for f, c in counts.items()},
        "failures": sum(c[k] for c in counts.values() for k in FAILURES),
        "slowest_case_s": round(slowest, 3),
        "examples": examples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=1024 * 1024,
        help="decode --max-pixels of the cases (small: a fuzzed header may ask for a lot)",
    )
    parser.add_argument("--cli-every", type=int, default=10, help="0: library calls only")
    args = parser.parse_args(argv)
    result = run(args.cases, args.seed, args.timeout, args.max_pixels, args.cli_every)
    print(json.dumps(result, indent=1))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
