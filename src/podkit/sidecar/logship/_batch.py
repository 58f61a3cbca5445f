"""Batches of encoded records (sans-IO)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

DEFAULT_BATCH_LINES: Final = 1000  # one POST / XADD pipeline per thousand lines
DEFAULT_FLUSH_AFTER: Final = 1.0  # a quiet log still reaches the sink within a second
DEFAULT_BUFFER_BATCHES: Final = 8  # at most 8 full batches wait for the sink; then reading pauses


@dataclass(slots=True)
class Batch:
    """Encoded records (one JSON document each) and, per stream, the offset they end at.

    ``marks[stream] = offset`` means: once this batch is acknowledged, that stream's content
    up to ``offset`` is delivered (the checkpoint may move there).
    """

    seq: int
    started: float
    lines: list[bytes] = field(default_factory=list)
    marks: dict[int, int] = field(default_factory=dict)


class Batcher:
    """Cuts the flow of records into batches by size or by age.

    Args:
        size: a batch is cut when it holds this many records.
        flush_after: a batch is cut when its first record is this many seconds old.
    """

    def __init__(
        self, *, size: int = DEFAULT_BATCH_LINES, flush_after: float = DEFAULT_FLUSH_AFTER
    ) -> None:
        if size < 1:
            raise ValueError("batch size must be at least 1")
        self.size = size
        self.flush_after = flush_after
        self._seq = 0
        self.current = Batch(0, 0.0)

    def full(self) -> bool:
        return len(self.current.lines) >= self.size

    def note_start(self, now: float) -> None:
        """Record when the first line of the current batch arrived (call before appending)."""
        if not self.current.lines:
            self.current.started = now

    def cut(self) -> Batch | None:
        """Close the current batch (if it has lines) and start a new one."""
        if not self.current.lines and not self.current.marks:
            return None
        batch = self.current
        self._seq += 1
        self.current = Batch(self._seq, 0.0)
        return batch

    def due_at(self) -> float | None:
        """When the current batch must be cut by age (None while it is empty)."""
        if not self.current.lines:
            return None
        return self.current.started + self.flush_after
