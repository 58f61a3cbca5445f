"""Progress of a run: a live table per stage on a terminal, one JSON line per interval otherwise.

The table is redrawn in place (ANSI cursor-up) and shows per stage the items in and out, what
is pending, the rate over the last interval, retries, dead letters and how many barriers
fired; a bar when the stage's input is known to be finite and its input count is known.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO

BAR_WIDTH = 20  # characters of a progress bar


class StageRow(Protocol):
    name: str
    kind: str
    items_in: int
    items_out: int
    pending: int
    retries: int
    dead: int
    fired: int

    def as_dict(self) -> dict[str, Any]: ...


class ProgressPrinter:
    """Prints per-stage progress to ``stream``: a table when ``table``, else JSON lines.

    Args:
        stream: where to write (a terminal for the table).
        table: redraw a table in place (True) or print one JSON object per call (False).
        clock: monotonic seconds, for rates.
    """

    def __init__(
        self, stream: TextIO, *, table: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream
        self.table = table
        self.clock = clock
        self.started = clock()
        self._last: tuple[float, dict[str, int]] | None = None
        self._drawn_lines = 0

    def __call__(self, rows: Sequence[StageRow]) -> None:
        now = self.clock()
        previous_time, previous = self._last or (self.started, {})
        elapsed = max(now - previous_time, 1e-9)
        rates = {r.name: (r.items_in - previous.get(r.name, 0)) / elapsed for r in rows}
        self._last = (now, {r.name: r.items_in for r in rows})
        if self.table:
            self._draw(rows, rates, now - self.started)
        else:
            record = {
                "elapsed": round(now - self.started, 3),
                "stages": [{**r.as_dict(), "rate": round(rates[r.name], 1)} for r in rows],
            }
            self.stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.stream.flush()

    def _draw(self, rows: Sequence[StageRow], rates: dict[str, float], elapsed: float) -> None:
        lines = [
            f"{'stage':<14} {'kind':<8} {'in':>10} {'out':>10} {'pending':>9} "
            f"{'rate/s':>9} {'retries':>7} {'dead':>6} {'fired':>5}  progress",
        ]
        for r in rows:
            total = r.items_in + r.pending
            share = r.items_in / total if total else 1.0
            filled = round(share * BAR_WIDTH)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            lines.append(
                f"{r.name[:14]:<14} {r.kind:<8} {r.items_in:>10} {r.items_out:>10} "
                f"{r.pending:>9} {rates[r.name]:>9.0f} {r.retries:>7} {r.dead:>6} {r.fired:>5}  "
                f"[{bar}] {share * 100:3.0f}%"
            )
        lines.append(f"elapsed {elapsed:.1f}s")
        if self._drawn_lines:
            self.stream.write(f"\x1b[{self._drawn_lines}F")
        self.stream.write("".join(f"\x1b[2K{line}\n" for line in lines))
        self._drawn_lines = len(lines)
