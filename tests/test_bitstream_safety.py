"""Untrusted ``.hpcm`` files: header checks, the work bound, checkpoint names, version 1, and
the fuzzer (benchmarks/fuzz_bitstreams.py) on a seeded subset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_modules import load_script

from hpcm.codec import CodecError, Encoded, decode_image, encode_image
from hpcm.codec.__main__ import main
from hpcm.codec.bitstream import DEFAULT_MAX_PIXELS
from hpcm.codec.checkpoint import atomic_torch_save, model_checkpoint
from hpcm.codec.model import z_size

ROOT = Path(__file__).resolve().parents[1]
FUZZER = ROOT / "benchmarks" / "fuzz_bitstreams.py"


fuzz = load_script(FUZZER, "fuzz_bitstreams")


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """A tiny model, its checkpoint, one coded image and its decoding."""
    d = tmp_path_factory.mktemp("coded")
    model = fuzz.tiny_model()
    atomic_torch_save(model_checkpoint(model), d / "tiny.pth.tar")
    with torch.inference_mode():
        enc = encode_image(model, fuzz.test_image(48, 40, seed=0), "tiny.pth.tar")
        reference = decode_image(model, enc)
    (d / "x.hpcm").write_bytes(enc.to_bytes())
    return model, enc, reference, d


def changed(enc: Encoded, **fields) -> bytes:
    return fuzz.pack({**fuzz.fields_of(enc), **fields})


def refusal(model, data: bytes, **kwargs) -> str:
    with pytest.raises(CodecError) as info, torch.inference_mode():
        decode_image(model, Encoded.from_bytes(data), **kwargs)
    return str(info.value)


def test_header_fields_are_checked_against_each_other(coded):
    model, enc, _, _ = coded
    assert "z" in refusal(model, changed(enc, z_shape=(4000, 4000)))
    assert "invalid image size 0x40" in refusal(model, changed(enc, size=(0, 40)))
    assert "stream length" in refusal(model, changed(enc, y=enc.y[:-2]))
    assert "model name" in refusal(model, changed(enc, name=b""))
    assert "checkpoint name" in refusal(model, changed(enc, ckpt=b"../tiny.pth.tar"))
    assert "not 'tiny'" in refusal(model, changed(enc, name=b"hpcm_base"))


def test_a_changed_size_within_the_padding_is_refused_not_cropped(coded):
    model, enc, _, _ = coded
    # 47x40 pads like 48x40: the same z and symbols, but the size is bound to the checksum.
    assert "desynchronised" in refusal(model, changed(enc, size=(47, 40)))


def test_the_work_bound_passes_8k_and_refuses_more(coded):
    model, enc, _, _ = coded
    huge = (65535, 65535)
    assert "--max-pixels" in refusal(model, changed(enc, size=huge, z_shape=z_size(*huge)))
    # An 8K photo passes the default bound: the next check (the weights) refuses this one.
    eight_k = (4320, 7680)
    other = changed(enc, size=eight_k, z_shape=z_size(*eight_k), fingerprint=enc.fingerprint ^ 1)
    assert "other weights" in refusal(model, other)
    assert DEFAULT_MAX_PIXELS >= 4352 * 7680
    assert "--max-pixels=1000" in refusal(model, enc.to_bytes(), max_pixels=1000)


def test_a_payload_with_recomputed_checksums_is_refused(coded):
    model, enc, _, _ = coded
    assert "desynchronised" in refusal(model, changed(enc, y=bytes(len(enc.y))))
    assert "desynchronised" in refusal(model, changed(enc, y=enc.z, z=enc.y))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_the_file_names_its_checkpoint_without_directories(coded, tmp_path, capsys):
    _, _, _, d = coded
    data = (d / "x.hpcm").read_bytes()
    assert b"tiny.pth.tar" in data and str(d).encode() not in data
    moved = tmp_path / "x.hpcm"
    moved.write_bytes(data)
    assert main(["decode", str(moved), str(tmp_path / "o.png")]) == 1
    assert "'tiny.pth.tar' named in the file is not beside it" in _error_line(capsys)
    args = ["decode", str(moved), str(tmp_path / "o.png"), "--checkpoint", str(d / "tiny.pth.tar")]
    assert main(args) == 0
    (tmp_path / "tiny.pth.tar").write_bytes((d / "tiny.pth.tar").read_bytes())
    assert main(["decode", str(moved), str(tmp_path / "o2.png")]) == 0


def test_version_1_files_still_decode(coded, tmp_path):
    model, enc, reference, d = coded
    with torch.inference_mode():
        symbols = model.decompress([[enc.y], [enc.z]], enc.z_shape)["symbol_crc"][0]
    v1 = changed(enc, version=1, ckpt=str(d / "tiny.pth.tar").encode(), symbol_crc=symbols)
    (tmp_path / "old.hpcm").write_bytes(v1)  # its checkpoint path is not beside it: as stored
    assert main(["decode", str(tmp_path / "old.hpcm"), str(tmp_path / "old.png")]) == 0
    with torch.inference_mode():
        assert torch.equal(decode_image(model, Encoded.from_bytes(v1)), reference)


def test_an_unwritable_output_is_one_line(coded, tmp_path, capsys):
    _, _, _, d = coded
    assert main(["decode", str(d / "x.hpcm"), str(tmp_path / "o.unknown")]) == 1
    assert "unknown extension" in _error_line(capsys)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_fuzzed_files_never_crash_hang_or_decode_wrong(tmp_path):
    cases = 1020  # 170 per family
    done = subprocess.run(
        [sys.executable, str(FUZZER), "--cases", str(cases), "--seed", "2026", "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )
    result = json.loads(done.stdout)
    assert done.returncode == 0, result["examples"]
    assert result["failures"] == 0
    for family, counts in result["counts"].items():
        assert sum(counts.values()) == cases // len(fuzz.FAMILIES), family
        assert counts.get("refused", 0) > 0, family
    # The checksums alone catch storage damage: those families never get to decode.
    for family in ("byte_flip", "truncate", "insert", "random_file"):
        assert set(result["counts"][family]) == {"refused"}, family
