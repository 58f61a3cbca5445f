"""The etcd JSON-gateway client against a real etcd: keys, transactions, leases, watches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from podkit.backends.etcd_client import (
    EtcdClient,
    compare_create_revision,
    prefix_end,
    request_delete,
    request_put,
    request_range,
)
from podkit.errors import BackendError, BackendUnavailable
from podkit.testing import EtcdServer, free_port


@pytest.fixture
async def client(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    etcd = EtcdClient(etcd_server.endpoint)
    yield etcd
    await etcd.aclose()


def test_prefix_end_covers_exactly_the_keys_under_a_prefix() -> None:
    assert prefix_end("app/") == b"app0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"


async def test_put_get_range_and_delete_round_trip_bytes(client: EtcdClient) -> None:
    first = await client.put("app/a", b"\x00binary\xff")
    second = await client.put("app/b", "text")
    await client.put("other", "x")
    assert second > first
    kv = await client.get("app/a")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision) == (b"app/a", b"\x00binary\xff", first)
    listed = await client.range("app/", prefix_end("app/"), sort_order="DESCEND")
    assert [kv.key for kv in listed.kvs] == [b"app/b", b"app/a"]
    assert listed.count == 2
    assert listed.revision >= second
    assert await client.delete("app/", prefix_end("app/")) == 2
    assert await client.get("app/a") is None


async def test_a_transaction_runs_the_branch_its_comparison_picks(client: EtcdClient) -> None:
    created = await client.txn(
        [compare_create_revision("job", 0)], [request_put("job", "one")], [request_range("job")]
    )
    assert created.succeeded
    again = await client.txn(
        [compare_create_revision("job", 0)], [request_put("job", "two")], [request_range("job")]
    )
    assert not again.succeeded
    kv = await client.get("job")
    assert kv is not None
    assert kv.value == b"one"
    removed = await client.txn(
        [compare_create_revision("job", kv.create_revision)], [request_delete("job")]
    )
    assert removed.succeeded
    assert await client.get("job") is None


async def test_a_lease_keeps_its_keys_until_revoked(client: EtcdClient) -> None:
    lease, ttl = await client.lease_grant(30)
    assert ttl == 30
    await client.put("leased", "v", lease=lease)
    assert await client.lease_keepalive(lease) == 30
    assert 0 < await client.lease_time_to_live(lease) <= 30
    assert await client.lease_revoke(lease)
    assert await client.get("leased") is None
    assert not await client.lease_revoke(lease)
    assert await client.lease_keepalive(lease) == 0


async def test_watch_yields_puts_and_deletes_and_replays_from_a_revision(
    client: EtcdClient,
) -> None:
    start = await client.put("cfg/a", "1")
    await client.put("cfg/a", "2")
    await client.delete("cfg/a")
    seen: list[tuple[str, bytes, bytes | None]] = []
    events = client.watch("cfg/", prefix_end("cfg/"), start_revision=start, prev_kv=True)
    async with contextlib.aclosing(events):
        async with asyncio.timeout(10):
            async for batch in events:
                for event in batch:
                    previous = event.prev_kv.value if event.prev_kv else None
                    seen.append((event.type, event.kv.value, previous))
                if len(seen) >= 3:
                    break
    assert seen == [("PUT", b"1", None), ("PUT", b"2", b"1"), ("DELETE", b"", b"2")]


async def test_an_unreachable_etcd_is_backend_unavailable() -> None:
    etcd = EtcdClient(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendUnavailable):
            await etcd.get("anything")
    finally:
        await etcd.aclose()


async def test_an_error_answered_by_etcd_is_a_backend_error(client: EtcdClient) -> None:
    with pytest.raises(BackendError, match="etcd"):
        await client.call("/v3/kv/range", {"key": "not base64!"})
