"""Atomic file writes: the one way xaibench writes results, models, logs, reports and manifests.

Every file is written to a temporary file in its folder, named ``.<name>.<host>-<pid>.<random>.tmp``
(dots of the host name as ``_``, so a clean-up can tell whose it is), then renamed into place: a
reader (or a resumed run) sees either no file or the complete file, never a partial one. Created
files get the mode the umask allows (``0o666 & ~umask``), as ``open`` gives. Imports nothing but
the standard library.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

HOST = socket.gethostname()
HOST_TAG = HOST.replace(".", "_")  # the host name as it appears in temporary file names


def temp_file(path: Path) -> Path:
    """A new, empty temporary file next to `path` (folders created) whose name names this host and process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{HOST_TAG}-{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode from the umask
            return tmp
        except FileExistsError:
            continue


def write_temp(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write through `write(tmp)` into a temporary file next to `path`; returns it (not yet in place)."""
    tmp = temp_file(Path(path))
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """Write through `write(tmp)` into a temporary file next to `path`, then rename it into place."""
    tmp = write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """`text` (UTF-8) into `path`, atomically."""
    write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))
