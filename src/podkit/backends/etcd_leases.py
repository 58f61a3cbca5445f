"""Leases on etcd with the key scheme of etcd's own election recipe.

Theory of operation. This follows ``go.etcd.io/etcd/client/v3/concurrency.Election``, the
recipe behind ``etcdctl elect``, so podkit processes and etcd's own clients can campaign in
one election:

* each candidate holds an etcd lease and the key ``NAME/<lease id in hex>`` attached to it,
  whose value is the candidate's identity (etcd's "proposal");
* the candidate whose key has the lowest create revision leads; the others wait in line,
  keeping their own lease alive, and move up when the keys before theirs are deleted (by
  resignation or lease expiry);
* the fencing token is the leader key's create revision: a key created later has a larger
  revision, and a candidate can only lead once every older key is gone, so each new term's
  token is larger than every earlier term's, whoever leads.

Renewal is a lease keep-alive followed by a check that our key still exists with its
revision (someone may have deleted it). etcd counts the lease's ttl from when it received the
keep-alive, so it keeps the key at least as long as the holder believes it leads.

The etcd lease is shorter than the election's ttl (:func:`etcd_lease_ttl`). etcd leases are
whole seconds, and etcd deletes an expired lease's keys only at its next expiry sweep (every
500 ms), after which the next candidate still has to take over. So a lease of the full ttl
would free the lease up to ttl + 0.5 s after the holder died, and failover would take longer
than the ttl promises. podkit asks for ``floor(ttl - sweep - takeover allowance)`` seconds
(at least 1) and reports what etcd granted in :attr:`Grant.ttl` (etcd may raise it to its
minimum, 1.5 times its election timeout rounded up: 2 s with etcd's defaults); the holder's
deadline and renew interval follow the granted ttl, never the ttl asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

from podkit.backends.etcd_client import EtcdClient, compare_create_revision, prefix_end
from podkit.backends.etcd_client import request_put as _put
from podkit.backends.etcd_client import request_range as _range
from podkit.backends.leases import AcquireResult, Grant, Holder, LeaseBackend, check_name
from podkit.errors import BackendError

ETCD_EXPIRY_SWEEP = 0.5  # etcd revokes expired leases every 500 ms (its lessor's loop)
TAKEOVER_ALLOWANCE = 0.2  # the next candidate sees the delete, takes over, starts its work
MIN_ETCD_LEASE_TTL = 1  # etcd lease ttls are whole seconds


def etcd_lease_ttl(ttl: float) -> int:
    """The etcd lease ttl (whole seconds) to ask for an election whose ttl is ``ttl``: short
    enough that an expired lease is swept and taken over within ``ttl`` when it can be
    (``floor(ttl - ETCD_EXPIRY_SWEEP - TAKEOVER_ALLOWANCE)``), and at least 1 second."""
    return max(MIN_ETCD_LEASE_TTL, math.floor(ttl - ETCD_EXPIRY_SWEEP - TAKEOVER_ALLOWANCE))


def election_prefix(name: str) -> str:
    """The key prefix of election ``name`` (as ``etcdctl elect NAME`` uses it)."""
    return f"{name}/"


class EtcdLeaseBackend(LeaseBackend):
    """Leases on the etcd member at ``endpoint`` (``http://host:port``)."""

    def __init__(self, endpoint: str, *, url: str | None = None) -> None:
        self.url = url or endpoint
        self.client = EtcdClient(endpoint)
        # The store revision last read per election: a wait resumes watching from there, so
        # a change between our read and the watch is never missed.
        self._seen: dict[str, int] = {}

    async def acquire(
        self, name: str, *, identity: str, ttl: float, claim: int = 0
    ) -> AcquireResult:
        check_name(name)
        prefix = election_prefix(name)
        lease_id = claim
        granted = await self.client.lease_keepalive(lease_id) if lease_id else 0
        if granted <= 0:
            # No place in line yet, or it expired: join at the end (again).
            lease_id, granted = await self.client.lease_grant(etcd_lease_ttl(ttl))
        if granted <= 0:
            raise BackendError(f"etcd granted lease {lease_id:x} a ttl of {granted}")
        key = f"{prefix}{lease_id:x}"
        await self.client.txn(
            [compare_create_revision(key, 0)],
            [_put(key, identity, lease=lease_id)],
            [_range(key)],
        )
        first = await self.client.range(
            prefix, prefix_end(prefix), limit=1, sort_target="CREATE", sort_order="ASCEND"
        )
        self._seen[name] = first.revision
        if not first.kvs:  # our key vanished at once: someone deleted it; try again
            return AcquireResult(None, None, claim=lease_id)
        kv = first.kvs[0]
        if kv.key == key.encode():
            # The keep-alive or grant above was sent after the caller's clock started, so
            # etcd keeps the key at least ``granted`` seconds from then.
            grant = Grant(name, identity, kv.create_revision, lease_id, ttl=float(granted))
            return AcquireResult(grant, claim=lease_id)
        holder = Holder(kv.value.decode(errors="replace"), kv.create_revision)
        return AcquireResult(None, holder, claim=lease_id)

    async def renew(self, grant: Grant, *, ttl: float) -> bool:
        left = await self.client.lease_keepalive(grant.lease_id)
        if left <= 0 or (grant.ttl is not None and left < grant.ttl):
            # Expired, or (never seen) refreshed for less than the deadline assumes.
            return False
        kv = await self.client.get(f"{election_prefix(grant.name)}{grant.lease_id:x}")
        return kv is not None and kv.create_revision == grant.token

    async def release(self, grant: Grant) -> bool:
        # Only our process knows this lease id, so checking the key's revision and then
        # revoking the lease cannot race with another holder.
        kv = await self.client.get(f"{election_prefix(grant.name)}{grant.lease_id:x}")
        if kv is None or kv.create_revision != grant.token:
            return False
        return await self.client.lease_revoke(grant.lease_id)

    async def withdraw(self, name: str, claim: int) -> None:
        if claim:
            await self.client.lease_revoke(claim)

    async def leader(self, name: str) -> Holder | None:
        check_name(name)
        prefix = election_prefix(name)
        first = await self.client.range(
            prefix, prefix_end(prefix), limit=1, sort_target="CREATE", sort_order="ASCEND"
        )
        if not first.kvs:
            return None
        kv = first.kvs[0]
        expires_in: float | None = None
        if kv.lease:
            left = await self.client.lease_time_to_live(kv.lease)
            expires_in = float(left) if left >= 0 else 0.0
        return Holder(kv.value.decode(errors="replace"), kv.create_revision, expires_in)

    async def wait_for_change(self, name: str, *, timeout: float) -> None:
        """Return when a key of election ``name`` changes (or after ``timeout``)."""
        prefix = election_prefix(name)
        seen = self._seen.get(name, 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        try:
            async with asyncio.timeout_at(deadline):
                events = self.client.watch(
                    prefix, prefix_end(prefix), start_revision=seen + 1 if seen else 0
                )
                async with contextlib.aclosing(events):
                    async for _ in events:
                        return
        except TimeoutError:
            return
        except BackendError:
            # Cannot watch now: the caller's next attempt reports the failure; wait out the
            # interval so a dead server is not polled in a tight loop.
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    async def aclose(self) -> None:
        await self.client.aclose()
