"""Worker apps for the work queue benchmarks: the same no-op handler on every system.

Each handler counts itself with one ``INCR`` on the benchmark's redis (the same cost for
every system), which is how the benchmark sees the last item finish.
"""

from __future__ import annotations

import os

import redis

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
COUNTER = "bench:done"
SEEN = "bench:seen"

_counter = redis.Redis.from_url(REDIS_URL)


def count(value: bytes | str | None = None) -> None:
    """The no-op job: count one execution (and, for the chaos run, which item it was)."""
    if value is None:
        _counter.incr(COUNTER)
        return
    pipe = _counter.pipeline(transaction=False)
    pipe.incr(COUNTER)
    pipe.hincrby(SEEN, value, 1)
    pipe.execute()
