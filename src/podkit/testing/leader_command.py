"""A command for ``podkit elect`` in tests and benchmarks: it records its term.

``python -m podkit.testing.leader_command DIR`` writes ``DIR/<pid>.start`` (JSON: token,
identity, pid, monotonic time) when it starts and ``DIR/<pid>.stop`` when SIGTERM arrives,
then exits 0.
While running it appends ``<token> <monotonic time>`` to ``DIR/ticks`` every 20 ms, the
"work" a fenced resource would receive.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

TICK = 0.02


def _publish(path: Path, record: dict[str, object]) -> None:
    """Write ``record`` so that readers see all of it or nothing (rename is atomic)."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    partial.rename(path)


def main(directory: Path) -> None:
    token = int(os.environ["PODKIT_FENCING_TOKEN"])
    record = {
        "token": token,
        "identity": os.environ["PODKIT_LEADER_ID"],
        "election": os.environ["PODKIT_ELECTION"],
        "pid": os.getpid(),
        "at": time.monotonic(),
    }

    def on_term(signum: int, frame: FrameType | None) -> None:
        _publish(directory / f"{os.getpid()}.stop", {"at": time.monotonic()})
        sys.exit(0)

    # The handler is in place before the start is announced: a SIGTERM right after the
    # announcement is always recorded.
    signal.signal(signal.SIGTERM, on_term)
    _publish(directory / f"{os.getpid()}.start", record)
    with (directory / "ticks").open("a") as ticks:
        while True:
            ticks.write(f"{token} {time.monotonic()}\n")
            ticks.flush()
            time.sleep(TICK)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
