"""The one image reader (hpcm.codec.images.read_pixels) of the codec, evaluation and training:
every mode a user's files come in, EXIF orientation, bad files; 16-bit images coded end to end."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from hpcm.codec.__main__ import main as codec_main
from hpcm.codec.images import (
    ALPHA_BACKGROUND,
    ImageError,
    image_size,
    read_image,
    read_pixels,
    to_8bit,
)
from hpcm.metrics import psnr_8bit
from hpcm.train.data import ImageFolder
from hpcm.train.prepare import prepare_folder

RNG = np.random.default_rng(0)
H, W = 24, 40


def png16(path: Path, samples: np.ndarray) -> Path:
    """A 16-bit PNG of (H, W, C) uint16 samples, C = 1 (gray), 2 (gray + alpha), 3 (RGB) or
    4 (RGBA), written by hand (Pillow cannot write 16-bit colour): filter 0 on every row."""
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\0" + samples[i].astype(">u2").tobytes() for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def rgb8() -> np.ndarray:
    return RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_rgb_is_read_exactly(tmp_path: Path) -> None:
    pixels = rgb8()
    Image.fromarray(pixels).save(tmp_path / "x.png")
    read, info = read_pixels(tmp_path / "x.png")
    assert read.dtype == np.uint8 and np.array_equal(read, pixels)
    assert info.mode == "RGB" and info.bits == 8 and not info.gray and not info.composited
    assert torch.equal(
        read_image(tmp_path / "x.png")[0], torch.from_numpy(pixels).permute(2, 0, 1) / 255
    )


def test_gray_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    read, info = read_pixels(tmp_path / "g.png")
    assert np.array_equal(read, np.repeat(gray[..., None], 3, axis=2))
    assert info.gray and info.bits == 8 and info.notes() == "8-bit gray (L)"


def test_alpha_is_composited_onto_white_and_opaque_alpha_changes_nothing(tmp_path: Path) -> None:
    assert ALPHA_BACKGROUND == 1.0
    rgba = np.concatenate([rgb8(), np.full((H, W, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    read, info = read_pixels(tmp_path / "opaque.png")
    assert np.array_equal(read, rgba[..., :3]) and not info.composited

    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    read, info = read_pixels(tmp_path / "alpha.png")
    assert info.composited and "alpha composited onto white" in info.notes()
    assert (read[0, 0] == 255).all()  # fully transparent: the background
    expected = np.rint(rgba[0, 1, :3].astype(float) * 128 / 255 + 255 * 127 / 255)
    assert np.array_equal(read[0, 1], expected)
    assert np.array_equal(read[1:], rgba[1:, :, :3])  # opaque pixels as they are

    la = np.stack([rgba[..., 0], rgba[..., 3]], axis=2)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    read, info = read_pixels(tmp_path / "la.png")
    assert info.gray and info.composited and (read[0, 0] == 255).all()
    assert np.array_equal(read[1:], np.repeat(la[1:, :, :1], 3, axis=2))


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    image = Image.fromarray(rgb8()).quantize(16)
    image.save(tmp_path / "p.png")
    read, info = read_pixels(tmp_path / "p.png")
    assert info.mode == "P" and not info.composited
    assert np.array_equal(read, np.array(image.convert("RGB")))
    index = np.array(image)[0, 0]
    image.save(tmp_path / "pt.png", transparency=int(index))
    read, info = read_pixels(tmp_path / "pt.png")
    assert info.composited and (read[0, 0] == 255).all()


def test_cmyk_jpeg_is_converted_by_pillow(tmp_path: Path) -> None:
    cmyk = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
    cmyk[:8] = 0  # no ink: white
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=95)
    read, info = read_pixels(tmp_path / "c.jpg")
    assert info.mode == "CMYK"
    with Image.open(tmp_path / "c.jpg") as image:
        assert np.array_equal(read, np.array(image.convert("RGB")))
    assert read[:4].min() >= 250


def test_16bit_gray_is_scaled_not_clipped(tmp_path: Path) -> None:
    gray = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")  # Pillow writes mode I;16 as 16-bit gray
    read, info = read_pixels(tmp_path / "g16.png")
    assert read.dtype == np.uint16 and info.bits == 16 and info.gray
    assert np.array_equal(read, np.repeat(gray[..., None], 3, axis=2))
    x = read_image(tmp_path / "g16.png")
    assert torch.allclose(x[0, 0], torch.from_numpy(gray.astype(np.float32) / 65535))
    assert 0.4 < x.mean() < 0.6  # uniform over the 16-bit range, not white


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_keeps_both_bytes(tmp_path: Path, channels: int) -> None:
    samples = RNG.integers(0, 65536, (H, W, channels), dtype=np.uint16)
    if channels == 4:
        samples[..., 3] = 65535
        samples[0, 0, 3] = 0
    read, info = read_pixels(png16(tmp_path / "c16.png", samples))
    assert read.dtype == np.uint16 and info.bits == 16 and not info.gray
    assert np.array_equal(read[1:], samples[1:, :, :3])  # all 16 bits, not the high byte
    if channels == 4:
        assert info.composited and (read[0, 0] == 65535).all()
    box = (3, 2, 30, 20)
    assert np.array_equal(read_pixels(tmp_path / "c16.png", box)[0], read[2:20, 3:30])


def test_16bit_gray_alpha_and_other_modes_are_refused_in_one_line(tmp_path: Path) -> None:
    png16(tmp_path / "la16.png", RNG.integers(0, 65536, (H, W, 2), dtype=np.uint16))
    with pytest.raises(ImageError, match=r"^cannot read image .*la16\.png: 16-bit LA PNGs are not"):
        read_pixels(tmp_path / "la16.png")
    Image.fromarray(np.zeros((H, W), np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match=r"f\.tif: images of mode F are not supported") as error:
        read_pixels(tmp_path / "f.tif")
    assert "\n" not in str(error.value)


def test_truncated_and_corrupt_files_are_one_line_errors(tmp_path: Path) -> None:
    Image.fromarray(rgb8()).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    for name in ("cut.png", "junk.jpg"):
        with pytest.raises(ImageError, match=rf"^cannot read image .*{name}: [^\n]+$"):
            read_pixels(tmp_path / name)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    pixels = rgb8()
    exif = Image.Exif()
    exif[274] = orientation  # ExifTags.Base.Orientation
    for name in ("x.png", "x.jpg"):
        Image.fromarray(pixels).save(tmp_path / name, exif=exif)
        with Image.open(tmp_path / name) as image:
            upright = np.array(ImageOps.exif_transpose(image).convert("RGB"))
        read, info = read_pixels(tmp_path / name)
        assert np.array_equal(read, upright) and info.oriented == (orientation != 1)
        assert image_size(tmp_path / name) == upright.shape[:2]
        box = (2, 3, 17, 19)  # (left, top, right, bottom) of the upright image
        assert np.array_equal(read_pixels(tmp_path / name, box)[0], upright[3:19, 2:17])


def test_training_and_test_samples_of_a_16bit_folder(tmp_path: Path) -> None:
    gray = RNG.integers(0, 65536, (64, 64), dtype=np.uint16)
    (tmp_path / "data").mkdir()
    Image.fromarray(gray).save(tmp_path / "data" / "g16.png")
    eight = np.repeat(to_8bit(gray)[..., None], 3, axis=2)
    assert np.array_equal(to_8bit(np.array([0, 128, 65535], np.uint16)), [0, 0, 255])
    assert np.abs(eight[..., 0] * 257.0 - gray).max() <= 128.5  # the nearest 8-bit level

    train = ImageFolder(tmp_path / "data", crop_size=64, train=True)
    sample = train[(0, 1)]
    assert sample.dtype == torch.uint8 and sample.float().mean() == pytest.approx(eight.mean())
    test = ImageFolder(tmp_path / "data", crop_size=None, train=False)
    assert torch.allclose(test[0][0], torch.from_numpy(gray / 65535).float())  # full precision

    counts = prepare_folder(tmp_path / "data", tmp_path / "prepared")
    assert counts["written"] == 1
    assert np.array_equal(np.load(tmp_path / "prepared" / "g16.png.npy"), eight)


def smooth_image(height: int, width: int) -> np.ndarray:
    """A smooth gray test picture in [0, 1] (a learned codec's favourite)."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    return 0.5 + 0.3 * np.sin(6 * x + 2 * y) * np.cos(4 * y)


def test_a_16bit_image_codes_like_its_8bit_version(tmp_path: Path, capsys) -> None:
    picture = smooth_image(64, 96)
    eight = np.rint(picture * 255).astype(np.uint8)
    Image.fromarray(eight, "L").save(tmp_path / "g8.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # the same values
    fine = np.rint(picture * 65535).astype(np.uint16)  # 16-bit detail between the 8-bit levels
    Image.fromarray(fine).save(tmp_path / "g16fine.png")
    results = {}
    for name in ("g8", "g16", "g16fine"):
        coded, out = tmp_path / f"{name}.hpcm", tmp_path / f"{name}_out.png"
        encode = ["encode", str(tmp_path / f"{name}.png"), str(coded)]
        assert codec_main([*encode, "--checkpoint", "pretrained:tiny_base", "--device", "cpu"]) == 0
        assert codec_main(["decode", str(coded), str(out), "--device", "cpu"]) == 0
        decoded = read_image(out)
        reference = torch.from_numpy(eight / 255).float().expand(1, 3, -1, -1)
        results[name] = (coded.stat().st_size, psnr_8bit(reference, decoded).item())
    assert "16-bit gray (I;16)" in capsys.readouterr().out
    # 16-bit values that equal the 8-bit ones code to the same bitstream and quality.
    assert results["g16"] == results["g8"]
    assert results["g8"][1] > 25  # a real picture came back, not a white one
    # True 16-bit content: the picture within half an 8-bit level; rate and PSNR close (measured:
    # 30.40 against 30.30 dB).
    assert results["g16fine"][0] == pytest.approx(results["g8"][0], rel=0.05)
    assert results["g16fine"][1] == pytest.approx(results["g8"][1], abs=0.3)
