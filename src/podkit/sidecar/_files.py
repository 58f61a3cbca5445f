"""Atomic file replacement, shared by the sidecars (checkpoints, rendered configuration)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def atomic_write(path: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never half.

    The data goes to a temporary file in the same directory, is fsynced, renamed over
    ``path``, and the directory is fsynced so the rename survives a power cut.

    Args:
        mode: permission bits of the new file; by default those of the file it replaces
            (0644 for a new file).

    Raises:
        OSError: the directory is not writable, the disk is full, ...
    """
    target = Path(path)
    directory = target.parent
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    tmp = directory / f".{target.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask; the caller asked for this
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
