"""Noticing that a file changed, for components that re-read a file they were given.

A file is polled rather than watched with inotify: polling works the same on every file
system (bind mounts, ConfigMap volumes whose files are swapped by a rename), and the files
are small and few.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

FileStamp = tuple[int, int, int]


def file_stamp(path: str | Path) -> FileStamp | None:
    """What identifies a version of ``path``: inode, size and modification time (None when
    it cannot be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


async def serve_file_changes(
    path: str | Path,
    changed: Callable[[], object],
    *,
    interval: float,
    skip_missing: bool = False,
) -> None:
    """Call ``changed`` every time ``path``'s stamp differs from the last one seen, checking
    every ``interval`` seconds, until cancelled.

    With ``skip_missing``, a file that cannot be read is not a change (it is waited for).
    """
    last = file_stamp(path)
    while True:
        await asyncio.sleep(interval)
        current = file_stamp(path)
        if current == last or (skip_missing and current is None):
            continue
        last = current
        changed()


__all__ = ["FileStamp", "file_stamp", "serve_file_changes"]
