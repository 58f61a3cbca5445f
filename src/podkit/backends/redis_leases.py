"""Leases in Redis: compare-and-set scripts and a fencing counter.

Theory of operation. Lease ``NAME`` is the string key ``podkit:lease:{NAME}`` holding
``"<token>\\n<identity>"`` with a millisecond expiry (``PX``); its fencing counter is
``podkit:lease:{NAME}:token``. The braces are a Redis Cluster hash tag, so both keys live in
one slot and every script below runs atomically on one node:

* acquire: if the key is absent, ``INCR`` the counter and ``SET`` the key with the new token;
* renew: ``PEXPIRE`` only if the key still holds exactly our ``token\\nidentity``;
* release: ``DEL`` only if the key still holds exactly our value.

Redis judges expiry by its own clock from the moment it ran the script, which is after we
sent it, so a holder that steps down at its send time + ttl never overlaps the next holder.
Tokens are as durable as the server's persistence: with ``appendonly`` they survive restarts.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions

from podkit.backends.leases import AcquireResult, Grant, Holder, LeaseBackend, check_name
from podkit.errors import BackendError, BackendUnavailable

CONNECT_TIMEOUT = 1.0  # loopback or LAN: a second without a connection means it is down
SOCKET_TIMEOUT = 2.0  # callers cut each request at their lease deadline anyway

_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  return {0, current, redis.call('PTTL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
local value = token .. '\\n' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, value, tonumber(ARGV[2])}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_LEADER = """
local current = redis.call('GET', KEYS[1])
if current then
  return {current, redis.call('PTTL', KEYS[1])}
end
return false
"""


def _keys(name: str) -> list[str]:
    return [f"podkit:lease:{{{name}}}", f"podkit:lease:{{{name}}}:token"]


def _value(grant: Grant) -> str:
    return f"{grant.token}\n{grant.identity}"


def _holder(value: bytes | str, pttl: int) -> Holder:
    text = value.decode() if isinstance(value, bytes) else value
    token, _, identity = text.partition("\n")
    return Holder(identity, int(token), pttl / 1000 if pttl >= 0 else None)


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class RedisLeaseBackend(LeaseBackend):
    """Leases on the Redis server at ``url`` (``redis://host:port/db``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: aioredis.Redis = aioredis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            retry_on_timeout=False,
        )
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._leader = self._client.register_script(_LEADER)

    async def _call(self, result: Awaitable[Any]) -> Any:
        try:
            return await result
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise BackendUnavailable(f"{self.url}: {exc}") from exc
        except redis.exceptions.BusyLoadingError as exc:  # pragma: no cover - loading AOF
            raise BackendUnavailable(f"{self.url}: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            raise BackendError(f"{self.url}: {exc}") from exc
        except OSError as exc:
            raise BackendUnavailable(f"{self.url}: {exc}") from exc

    async def acquire(
        self, name: str, *, identity: str, ttl: float, claim: int = 0
    ) -> AcquireResult:
        check_name(name)
        reply = cast(
            list[Any], await self._call(self._acquire(keys=_keys(name), args=[identity, _ms(ttl)]))
        )
        won, value, pttl = int(reply[0]), reply[1], int(reply[2])
        holder = _holder(value, pttl)
        if won:
            return AcquireResult(Grant(name, identity, holder.token))
        return AcquireResult(None, holder)

    async def renew(self, grant: Grant, *, ttl: float) -> bool:
        reply = await self._call(
            self._renew(keys=_keys(grant.name), args=[_value(grant), _ms(ttl)])
        )
        return int(reply) == 1

    async def release(self, grant: Grant) -> bool:
        reply = await self._call(self._release(keys=_keys(grant.name), args=[_value(grant)]))
        return int(reply) == 1

    async def leader(self, name: str) -> Holder | None:
        check_name(name)
        reply = await self._call(self._leader(keys=_keys(name), args=[]))
        if not reply:
            return None
        return _holder(reply[0], int(reply[1]))

    async def aclose(self) -> None:
        try:
            await self._client.aclose()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendUnavailable(f"{self.url}: {exc}") from exc
