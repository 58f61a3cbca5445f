"""The guardian: kills the containers' process groups if the supervisor dies.

``podkit up`` starts this process in its own session with a pipe on its standard input and
writes ``+PGID`` when it starts a container and ``-PGID`` when the container's group is gone.
When the pipe closes — the supervisor exited, even by SIGKILL — every group still listed gets
SIGKILL. The parent-death signal already kills each container's first process; the guardian
also reaches what those processes started (a shell's children, a worker pool).

Run as ``python -m podkit.pods._guardian``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def guard(lines: list[str] | None = None) -> set[int]:
    """Follow the ``+PGID``/``-PGID`` lines until end of input; return the groups left."""
    groups: set[int] = set()
    for line in lines if lines is not None else sys.stdin:
        text = line.strip()
        if len(text) > 1 and text[0] in "+-" and text[1:].isdigit():
            pgid = int(text[1:])
            if text[0] == "+":
                groups.add(pgid)
            else:
                groups.discard(pgid)
    return groups


def main() -> None:
    # Ctrl-C in the terminal goes to the supervisor, which stops the pods in order; the
    # guardian acts only when its input closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for pgid in guard():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    main()
