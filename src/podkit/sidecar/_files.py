"""Atomic file replacement, shared by the sidecars (checkpoints, rendered configuration).

A file is replaced in two steps so that a reader sees the old or the new content, never half:
:func:`write_temp` writes and fsyncs a temporary file beside the target (where it can be
checked, e.g. by an application's config test), :func:`commit_temp` renames it over the
target and fsyncs the directory so the rename survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_temp(
    target: str | Path, data: bytes, *, mode: int | None = None, tag: str = "tmp"
) -> Path:
    """Write ``data`` to a new temporary file in ``target``'s directory and fsync it.

    Args:
        mode: permission bits; by default those of ``target`` (0644 when it does not exist).
        tag: part of the temporary name (``.NAME.TAG.PID``).

    Raises:
        OSError: the directory is not writable, the disk is full, ...
    """
    target = Path(target)
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    tmp = target.parent / f".{target.name}.{tag}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; the caller asked for this
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    return tmp


def commit_temp(tmp: str | Path, target: str | Path) -> None:
    """Rename ``tmp`` over ``target`` and fsync the directory.

    Raises:
        OSError: the rename failed (``tmp`` is removed).
    """
    target = Path(target)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (temporary file, fsync, rename, dir fsync).

    Raises:
        OSError: the directory is not writable, the disk is full, ...
    """
    commit_temp(write_temp(path, data, mode=mode), path)
