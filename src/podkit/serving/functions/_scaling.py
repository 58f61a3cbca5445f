"""Decisions of a function's worker pool, sans-IO: where an invocation goes, which workers
are idle long enough to stop.

A pool holds up to ``max_workers`` processes; each runs up to ``per_worker`` invocations at
once. An invocation goes to the busiest worker that still has room (packing load onto few
workers lets the others go idle and stop), else a new worker starts if the pool may grow,
else it waits for one being started or for room.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class Placement(enum.Enum):
    SPAWN = "spawn"  # start a new worker and send it there
    WAIT = "wait"  # wait for room or for a worker being started


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """What the pool knows of one worker: invocations in flight and when it was last used."""

    inflight: int
    last_used: float


def place(
    loads: Sequence[WorkerLoad], *, starting: int, per_worker: int, max_workers: int
) -> int | Placement:
    """The index of the worker to send an invocation to, or SPAWN, or WAIT."""
    best = -1
    for i, load in enumerate(loads):
        if load.inflight < per_worker and (best < 0 or load.inflight > loads[best].inflight):
            best = i
    if best >= 0:
        return best
    if len(loads) + starting < max_workers:
        return Placement.SPAWN
    return Placement.WAIT


def idle_workers(loads: Sequence[WorkerLoad], *, now: float, idle: float) -> list[int]:
    """Indexes of workers with nothing in flight for at least ``idle`` seconds."""
    return [
        i for i, load in enumerate(loads) if load.inflight == 0 and now - load.last_used >= idle
    ]


def per_worker_limit(concurrency: int, max_workers: int) -> int:
    """Invocations one worker takes so that the pool, full, runs ``concurrency`` at once."""
    return max(1, -(-concurrency // max_workers))
