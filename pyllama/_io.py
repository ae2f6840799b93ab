"""Atomic file writes: write to a temporary name in the same folder, fsync, rename."""
from __future__ import annotations

import os
import tempfile
from typing import Callable


def file_mode() -> int:
    """The mode a plain new file gets here: ``0o666 & ~umask`` (as ``open(path, "w")`` gives)."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``.

    A crash (or a full disk) while writing leaves any previous file at ``path`` intact.
    The file gets the usual mode of a new file (``0o666 & ~umask``), not the ``0600``
    of the temporary file it was written as.
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=d)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path, text: str) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, w)


def atomic_write_bytes(path, data: bytes) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, w)
