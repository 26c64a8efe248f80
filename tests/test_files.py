"""hpcm.files.atomic_write: the old file or the complete new one, never a part or a temporary."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import BinaryIO

import pytest
import torch

from hpcm.codec.images import ImageError, write_image
from hpcm.files import atomic_write


def test_writes_the_complete_file_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    atomic_write(path, b"old\n")
    atomic_write(path, lambda file: file.write(b"new\n"))
    assert path.read_bytes() == b"new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() creates files


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, error: BaseException
) -> None:
    path = tmp_path / "last.pth.tar"
    path.write_bytes(b"old content")

    def write_part(file: BinaryIO) -> None:
        file.write(b"half of the new")
        file.flush()
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, write_part)
    assert path.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth.tar"]


def test_a_failed_rename_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rename(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr("hpcm.files.os.replace", no_rename)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write(tmp_path / "new.hpcm", b"stream")
    assert list(tmp_path.iterdir()) == []


def test_a_special_file_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write(fifo, b"through the pipe")
    reader.join(timeout=30)
    assert received == [b"through the pipe"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # not replaced by a regular file
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


def test_write_image_keeps_the_old_image_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.png"
    write_image(torch.zeros(1, 3, 8, 8), path)
    before = path.read_bytes()

    def no_sync(fd: int) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr("hpcm.files.os.fsync", no_sync)
    with pytest.raises(ImageError, match="cannot write image .*no space left"):
        write_image(torch.ones(1, 3, 8, 8), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
