"""The function store's contract, on SQLite and a real redis-server: expiring keys, add-if-
absent, compare-and-delete, scans and GCRA rate limits."""

from __future__ import annotations

import time

from podkit.serving.functions._store import open_store


async def test_keys_expire_and_add_only_stores_what_is_absent(backend: str) -> None:
    store = open_store(backend)
    try:
        now = time.time()
        assert await store.get("a", now=now) is None
        assert await store.add("a", "1", ttl=0.5, now=now)
        assert not await store.add("a", "2", ttl=0.5, now=now)
        assert await store.get("a", now=now) == "1"
        assert not await store.delete_if("a", "2")
        assert await store.delete_if("a", "1")
        assert await store.add("a", "3", ttl=60, now=now)
        await store.set("call:1", "x", ttl=60, now=now)
        await store.set("call:2", "y", ttl=60, now=now)
        assert await store.scan("call:", now=now, limit=10) == [("call:1", "x"), ("call:2", "y")]
        assert len(await store.scan("call:", now=now, limit=1)) == 1
    finally:
        await store.aclose()


async def test_gcra_allows_a_burst_then_the_steady_rate(backend: str) -> None:
    store = open_store(backend)
    try:
        now = time.time()
        # 2 calls per second, bursts of 3: three now, then one every half second
        waits = [await store.gcra("r", interval=0.5, burst=2, now=now) for _ in range(4)]
        assert waits[:3] == [0.0, 0.0, 0.0]
        assert 0.4 < waits[3] <= 0.5
        assert await store.gcra("r", interval=0.5, burst=2, now=now + 0.5) == 0.0
    finally:
        await store.aclose()
