"""An etcd holder's deadline never outlasts its etcd lease, as etcd itself reports it."""

from __future__ import annotations

import asyncio
import time

import pytest

from podkit.backends.etcd_client import prefix_end
from podkit.backends.etcd_leases import EtcdLeaseBackend, etcd_lease_ttl
from podkit.election import Election
from podkit.testing import EtcdServer

TTL = 2.0
SAMPLES = 40  # about two seconds of samples: several renewals of either lease length


def test_the_etcd_lease_asked_for_leaves_room_for_the_sweep_and_the_takeover() -> None:
    assert etcd_lease_ttl(2.0) == 1
    assert etcd_lease_ttl(3.0) == 2
    assert etcd_lease_ttl(10.0) == 9
    assert etcd_lease_ttl(0.5) == 1


@pytest.mark.parametrize(
    ("election_timeout", "granted"),
    [(0.5, 1), (None, 2)],
    ids=["etcd-shortest-lease-1s", "etcd-default-shortest-lease-2s"],
)
async def test_an_etcd_holders_deadline_is_never_later_than_the_lease_etcd_keeps(
    election_timeout: float | None, granted: int
) -> None:
    """etcd reports the seconds left on a lease rounded down, so the lease ends before
    ``answer + left + 1``; the holder's deadline must never be later than that, and its
    deadline must follow the ttl etcd granted (not the ttl asked for)."""
    with EtcdServer(election_timeout=election_timeout) as server:
        backend = EtcdLeaseBackend(server.endpoint, url=server.url)
        election = Election(backend, "deadline", identity="holder", ttl=TTL)
        async with backend, election, election.leadership() as term:
            first = await backend.client.range("deadline/", prefix_end("deadline/"))
            assert len(first.kvs) == 1
            lease_id = first.kvs[0].lease
            for _ in range(SAMPLES):
                assert term.leads(), term.lost_reason
                valid_until = term.valid_until
                answer = await backend.client.call("/v3/lease/timetolive", {"ID": str(lease_id)})
                answered = time.monotonic()
                assert int(answer["grantedTTL"]) == granted
                left = int(answer.get("TTL", 0))  # the gateway leaves zeros out
                assert left >= 0
                assert valid_until < answered + left + 1
                # The deadline comes from the granted ttl: at most that ttl ahead.
                assert term.valid_until <= answered + granted
                await asyncio.sleep(0.05)
