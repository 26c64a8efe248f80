"""Writing a file atomically: a reader sees the old file or the complete new one, never a part.

Standard library only, so that every layer (codec, train, eval) may import it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def atomic_write(path: str | os.PathLike, write: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``path`` so that it is either the old file or the complete new one.

    ``write`` (the bytes, or a function called with the open binary file) fills a new temporary
    file beside ``path`` (``.NAME.RANDOM.tmp``, created as ``open`` creates files: mode 0o666
    less the umask), which is flushed to disk and renamed over ``path`` (rename is atomic on
    POSIX). Any failure, ``KeyboardInterrupt`` included, removes the temporary file and re-raises;
    only a kill (SIGKILL, power loss) can leave it behind. The directory must exist. A ``path``
    that exists but is neither a file nor a directory (``/dev/null``, a FIFO) is written in
    place: renaming over it would replace it.
    """
    path = Path(path)
    if isinstance(write, bytes):
        write = _writer(write)
    if path.exists() and not (path.is_file() or path.is_dir()):
        with open(path, "wb") as file:
            write(file)
        return
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _writer(data: bytes) -> Callable[[BinaryIO], object]:
    return lambda file: file.write(data)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty file beside ``path`` with a name no other writer uses: (descriptor, path)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")
