"""The ``.hpcm`` file format: a header, the y and z rANS streams, checksums.

Layout (big-endian)::

    magic "HPCM" | version u8 | name length u8 | model name | checkpoint length u16 |
    checkpoint file name (utf-8) | weights fingerprint u32 | height u16 | width u16 |
    z height u16 | z width u16 | symbol crc32 u32 | y length u32 | z length u32 |
    payload crc32 u32 | header crc32 u32 | y stream | z stream

Version 2 (written now) stores the checkpoint's file name only, never a directory of the
encoding machine, and its symbol checksum also covers the declared image size. Version 1 files
(a full checkpoint path, the checksum of the symbols alone) are still read.

The symbol checksum lets the decoder notice a desynchronised decode (the entropy parameters
came out differently on the decoding side: another numeric platform, CPU against GPU, another
torch build) and refuse to write a wrong image. A file is untrusted input: every header field
is checked against the others and against the model before anything is allocated, the work a
file may ask for is bounded (``max_pixels``), and any failure while decoding is a
:class:`CodecError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import torch

from hpcm.codec.model import (
    HPCM,
    Y_DOWNSAMPLING,
    crop_center,
    pad_to_multiple,
    padded_size,
    z_size,
)

MAGIC = b"HPCM"
VERSION = 2
READABLE_VERSIONS = (1, 2)
# The fixed-size fields after the names: fingerprint, h, w, zh, zw, symbol crc, y length,
# z length, payload crc (benchmarks/fuzz_bitstreams.py writes headers with it too).
HEADER_FIELDS = struct.Struct(">IHHHHIIII")
_SIZE = struct.Struct(">HH")
# The work a file may ask of the decoder, in pixels of the padded image: an 8K photo
# (7680 x 4320) and an 8192 x 8192 image pass; a larger one needs decode --max-pixels.
DEFAULT_MAX_PIXELS = 8192 * 8192
# compressai's rANS coder writes whole 32-bit words, at least its 64-bit final state.
_WORD, _MIN_STREAM = 4, 8
# Errors of torch, numpy and compressai.ans on a stream that passed every header check but
# does not decode (a payload that was changed and its checksum recomputed, a full memory).
_DECODE_ERRORS = (RuntimeError, MemoryError, ValueError, OverflowError, IndexError, TypeError)


class CodecError(ValueError):
    """A file that is not a valid ``.hpcm`` stream, or that does not decode correctly."""


def _content_crc(symbol_crc: int, size: tuple[int, int], version: int) -> int:
    """The stored symbol checksum: version 2 binds the declared image size to the symbols, so
    a changed size field cannot crop the right symbols into an image of another shape."""
    return zlib.crc32(_SIZE.pack(*size), symbol_crc) if version >= 2 else symbol_crc


# -- the container ---------------------------------------------------------------------------------
@dataclass
class Encoded:
    model_name: str
    checkpoint: str
    fingerprint: int
    size: tuple[int, int]
    z_shape: tuple[int, int]
    symbol_crc: int
    y: bytes
    z: bytes
    version: int = VERSION

    @property
    def num_bytes(self) -> int:
        return len(self.y) + len(self.z)

    def to_bytes(self) -> bytes:
        if self.version != VERSION:
            raise CodecError(f"only version {VERSION} files are written, not {self.version}")
        self.check()
        name, ckpt = self.model_name.encode(), self.checkpoint.encode()
        head = MAGIC + bytes([VERSION, len(name)]) + name + struct.pack(">H", len(ckpt)) + ckpt
        head += HEADER_FIELDS.pack(
            self.fingerprint,
            *self.size,
            *self.z_shape,
            self.symbol_crc,
            len(self.y),
            len(self.z),
            zlib.crc32(self.y + self.z),
        )
        return head + struct.pack(">I", zlib.crc32(head)) + self.y + self.z

    @classmethod
    def from_bytes(cls, data: bytes) -> Encoded:
        """Parse and check a file: raises :class:`CodecError` on anything inconsistent."""
        if data[:4] != MAGIC:
            raise CodecError("not an HPCM file (bad magic)")
        if len(data) < 6 or data[4] not in READABLE_VERSIONS:
            version = data[4] if len(data) > 4 else "?"
            raise CodecError(
                f"unsupported HPCM file version {version} (this reads "
                f"{', '.join(map(str, READABLE_VERSIONS))})"
            )
        try:
            pos = 6 + data[5]
            name = data[6:pos].decode()
            (ckpt_len,) = struct.unpack_from(">H", data, pos)
            ckpt = data[pos + 2 : pos + 2 + ckpt_len].decode()
            pos += 2 + ckpt_len
            fp, h, w, zh, zw, sym_crc, y_len, z_len, payload_crc = HEADER_FIELDS.unpack_from(
                data, pos
            )
            pos += HEADER_FIELDS.size
            (head_crc,) = struct.unpack_from(">I", data, pos)
        except (struct.error, UnicodeDecodeError):
            raise CodecError("truncated or corrupt HPCM header") from None
        if zlib.crc32(data[:pos]) != head_crc:
            raise CodecError("corrupt HPCM header (checksum mismatch)")
        pos += 4
        if len(data) != pos + y_len + z_len:
            raise CodecError(
                f"truncated HPCM file: {len(data)} bytes, header says {pos + y_len + z_len}"
            )
        y, z = data[pos : pos + y_len], data[pos + y_len :]
        if zlib.crc32(y + z) != payload_crc:
            raise CodecError("corrupt HPCM payload (checksum mismatch)")
        encoded = cls(name, ckpt, fp, (h, w), (zh, zw), sym_crc, y, z, version=data[4])
        encoded.check()
        return encoded

    def check(self) -> None:
        """The header fields against each other (the model is checked by :func:`decode_image`)."""
        if not self.model_name or not self.model_name.isprintable():
            raise CodecError(f"invalid model name {self.model_name!r} in the HPCM header")
        if self.version >= 2 and self.checkpoint and not is_plain_file_name(self.checkpoint):
            raise CodecError(
                f"invalid checkpoint name {self.checkpoint!r} in the HPCM header "
                "(a file name without directories, or none)"
            )
        h, w = self.size
        if h < 1 or w < 1:
            raise CodecError(f"invalid image size {h}x{w} in the HPCM header")
        if tuple(self.z_shape) != z_size(h, w):
            raise CodecError(
                f"inconsistent HPCM header: a {h}x{w} image has a {z_size(h, w)} z, the header "
                f"says {tuple(self.z_shape)}"
            )
        for part, stream in (("y", self.y), ("z", self.z)):
            if len(stream) < _MIN_STREAM or len(stream) % _WORD:
                raise CodecError(f"invalid {part} stream length {len(stream)} in the HPCM header")


def is_plain_file_name(name: str) -> bool:
    """A name that stays in its directory: no separators, not ``.``/``..``, printable."""
    return (
        bool(name)
        and name.isprintable()
        and name not in (".", "..")
        and not any(sep in name for sep in ("/", "\\", "\0"))
    )


# -- encode / decode an image ----------------------------------------------------------------------
def encode_image(model: HPCM, x: torch.Tensor, checkpoint: str = "") -> Encoded:
    """Code one (1, 3, H, W) image of any size (padded here, cropped after decoding).
    ``checkpoint`` is the file name stored for the decoder (a file name, no directories)."""
    if x.dim() != 4 or x.shape[:2] != (1, 3):
        raise CodecError(f"expected one RGB image (1, 3, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if max(h, w) > 65535:
        raise CodecError(f"image {h}x{w} is too large for the format (65535 px per side)")
    device = next(model.parameters()).device
    out = model.compress(pad_to_multiple(x.to(device)))
    return Encoded(
        model.name,
        checkpoint,
        model.weights_fingerprint(),
        (h, w),
        tuple(out["shape"]),
        _content_crc(out["symbol_crc"][0], (h, w), VERSION),
        out["strings"][0][0],
        out["strings"][1][0],
    )


def _guarded(stream: bytes, symbols: int) -> bytes:
    """The stream with zero words after it. compressai's rANS decoder reads words without a
    bound check (``Rans64DecAdvance`` renormalises from ``*pptr``, compressai 1.2.8
    ``rans64.h``): a stream that ends early would be read past its end. A decode step pops at
    most 16 bits (the coding precision), so one word per symbol covers every read of a valid
    stream's decoder and of any changed one but an adversarial escape-code sequence."""
    return stream + bytes(_WORD * symbols + _MIN_STREAM)


def decode_image(model: HPCM, enc: Encoded, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode to a (1, 3, H, W) image; raises :class:`CodecError` on any mismatch, on a file
    that asks for more than ``max_pixels`` (of the padded image) and on any decoding failure."""
    enc.check()
    if enc.model_name != model.name:
        raise CodecError(f"file was encoded with model {enc.model_name!r}, not {model.name!r}")
    hp, wp = padded_size(*enc.size)
    if hp * wp > max_pixels:
        h, w = enc.size
        raise CodecError(
            f"file declares a {h}x{w} image ({hp * wp} pixels once padded), more than "
            f"--max-pixels={max_pixels}; raise it to decode this file"
        )
    if enc.fingerprint != model.weights_fingerprint():
        raise CodecError("file was encoded with other weights than this checkpoint's")
    zh, zw = enc.z_shape
    y_symbols = model.config.M * (hp // Y_DOWNSAMPLING) * (wp // Y_DOWNSAMPLING)
    strings = [[_guarded(enc.y, y_symbols)], [_guarded(enc.z, model.config.N * zh * zw)]]
    try:
        out = model.decompress(strings, enc.z_shape)
    except CodecError:
        raise
    except _DECODE_ERRORS as error:
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CodecError(f"cannot decode the file: {type(error).__name__}: {text}") from None
    if _content_crc(out["symbol_crc"][0], enc.size, enc.version) != enc.symbol_crc:
        raise CodecError(
            "decoding desynchronised: the decoded symbols differ from the encoded ones "
            "(a changed file, or entropy parameters that differ between the two sides: another "
            "device, numeric platform or torch build); decode on the platform that encoded"
        )
    return crop_center(out["x_hat"], enc.size)
