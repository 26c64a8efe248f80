"""The ``.hpcm`` file format: a header, the y and z rANS streams, checksums.

Layout (big-endian)::

    magic "HPCM" | version u8 | name length u8 | model name | checkpoint path length u16 |
    checkpoint path (utf-8, a hint for decode) | weights fingerprint u32 | height u16 |
    width u16 | z height u16 | z width u16 | symbol crc32 u32 | y length u32 | z length u32 |
    payload crc32 u32 | header crc32 u32 | y stream | z stream

The symbol checksum lets the decoder notice a desynchronised decode (the entropy parameters
came out differently on the decoding side: another numeric platform, CPU against GPU, another
torch build) and refuse to write a wrong image.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import torch

from hpcm.codec.model import HPCM, crop_center, pad_to_multiple

MAGIC = b"HPCM"
VERSION = 1
_FIXED = struct.Struct(
    ">IHHHHIIII"
)  # fingerprint, h, w, zh, zw, sym crc, y len, z len, payload crc


class CodecError(ValueError):
    """A file that is not a valid ``.hpcm`` stream, or that does not decode correctly."""


# -- weights fingerprint -------------------------------------------------------------------------
def weights_fingerprint(model: HPCM) -> int:
    """CRC32 of every parameter's bytes: tells whether two models hold the same weights."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point() and t.numel()]
    # Cached until any tensor changes in place (an optimizer step, load_state_dict ...);
    # inference-mode tensors keep no version counter, so those are hashed every time.
    key = None if any(t.is_inference() for t in tensors) else tuple(t._version for t in tensors)
    cached = getattr(model, "_fingerprint", None)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    crc = 0
    for t in tensors:
        crc = zlib.crc32(t.detach().float().cpu().contiguous().numpy().tobytes(), crc)
    model._fingerprint = (key, crc)
    return crc


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

    @property
    def num_bytes(self) -> int:
        return len(self.y) + len(self.z)

    def to_bytes(self) -> bytes:
        name, ckpt = self.model_name.encode(), self.checkpoint.encode()
        head = MAGIC + bytes([VERSION, len(name)]) + name + struct.pack(">H", len(ckpt)) + ckpt
        head += _FIXED.pack(
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
        if data[:4] != MAGIC:
            raise CodecError("not an HPCM file (bad magic)")
        if len(data) < 6 or data[4] != VERSION:
            version = data[4] if len(data) > 4 else "?"
            raise CodecError(f"unsupported HPCM file version {version} (this reads {VERSION})")
        try:
            pos = 6 + data[5]
            name = data[6:pos].decode()
            (ckpt_len,) = struct.unpack_from(">H", data, pos)
            ckpt = data[pos + 2 : pos + 2 + ckpt_len].decode()
            pos += 2 + ckpt_len
            fp, h, w, zh, zw, sym_crc, y_len, z_len, payload_crc = _FIXED.unpack_from(data, pos)
            pos += _FIXED.size
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
        return cls(name, ckpt, fp, (h, w), (zh, zw), sym_crc, y, z)


# -- encode / decode an image ----------------------------------------------------------------------
def encode_image(model: HPCM, x: torch.Tensor, checkpoint: str = "") -> Encoded:
    """Code one (1, 3, H, W) image of any size (padded here, cropped after decoding)."""
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
        weights_fingerprint(model),
        (h, w),
        tuple(out["shape"]),
        out["symbol_crc"][0],
        out["strings"][0][0],
        out["strings"][1][0],
    )


def decode_image(model: HPCM, enc: Encoded) -> torch.Tensor:
    """Decode to a (1, 3, H, W) image; raises :class:`CodecError` on any mismatch."""
    if enc.model_name != model.name:
        raise CodecError(f"file was encoded with model {enc.model_name!r}, not {model.name!r}")
    if enc.fingerprint != weights_fingerprint(model):
        raise CodecError("file was encoded with other weights than this checkpoint's")
    out = model.decompress([[enc.y], [enc.z]], enc.z_shape)
    if out["symbol_crc"][0] != enc.symbol_crc:
        raise CodecError(
            "decoding desynchronised: the decoded symbols differ from the encoded ones "
            "(the entropy parameters differ between the two sides: another device, numeric "
            "platform or torch build); decode on the platform that encoded"
        )
    return crop_center(out["x_hat"], enc.size)
