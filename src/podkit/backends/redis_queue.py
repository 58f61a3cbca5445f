"""Work queues in redis, for workers on many machines.

Theory of operation. Each queue is a handful of keys under ``podkit:q:{NAME}:`` (the braces
are a cluster hash tag, so one queue's keys share a slot):

* ``ready``   sorted set of item ids; score ``(1000 - priority) * 2**41 + ms`` where ``ms``
  is the time the item became visible, in milliseconds since 2020 (highest priority first,
  then oldest first, as on every backend; exact in a double until 2089);
* ``delayed`` sorted set of item ids by the time they become visible (delays and backoff);
* ``leased``  sorted set of item ids by lease deadline;
* ``dead``    sorted set of item ids by the time they died;
* ``item:ID`` hash with the body and bookkeeping (attempts, token, state, error);
* ``key:KEY`` string: idempotency key -> item id (expires ``key_ttl`` after the ack);
* ``totals`` (hash of counters), ``rate:BUCKET`` (hash, expires).

Every state change is one Lua script, so it is atomic: ``lease`` reclaims expired leases,
promotes due delayed items and pops the best ready items in one step, which is why two
workers can never hold the same item. Tokens make receipts unique per delivery: an ack or
extend with the token of an earlier delivery is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from podkit.backends.queues import (
    RATE_BUCKET_SECONDS,
    RATE_WINDOW_BUCKETS,
    RECLAIM_BATCH,
    STAT_KINDS,
    DeadRecord,
    Encoding,
    LeasedRecord,
    NewItem,
    PutResult,
    QueueBackend,
    QueueStats,
    build_counts,
    rate_buckets,
)
from podkit.errors import BackendError, BackendUnavailable, ConfigError

_RATE_TTL = RATE_BUCKET_SECONDS * (RATE_WINDOW_BUCKETS + 2)

# Shared Lua helpers: the ready score and the rate/total counters.
_LUA_COMMON = """
local P = ARGV[1]
local function ready_score(prio, visible)
  local ms = math.max(0, math.floor((tonumber(visible) - 1577836800) * 1000))
  return string.format('%d', (1000 - tonumber(prio)) * 2199023255552 + ms)
end
local function count(kind, n, now)
  if n > 0 then
    redis.call('HINCRBY', P .. 'totals', kind, n)
    local rk = P .. 'rate:' .. math.floor(tonumber(now) / __BUCKET__)
    redis.call('HINCRBY', rk, kind, n)
    redis.call('EXPIRE', rk, __TTL__)
  end
end
""".replace("__BUCKET__", str(RATE_BUCKET_SECONDS)).replace("__TTL__", str(_RATE_TTL))

# ARGV: prefix, now, then 7 fields per item: id, body, enc, key, prio, visible_at, max
_PUT = (
    _LUA_COMMON
    + """
local now = ARGV[2]
local out = {}
local created = 0
for i = 3, #ARGV, 7 do
  local id, key = ARGV[i], ARGV[i + 3]
  local existing = false
  if key ~= '' then
    existing = redis.call('GET', P .. 'key:' .. key)
    if existing then
      -- an acked item's key holds "id|expires_at"; past that time it is forgotten
      local bar = string.find(existing, '|', 1, true)
      if bar then
        if tonumber(string.sub(existing, bar + 1)) <= tonumber(now) then
          existing = false
        else
          existing = string.sub(existing, 1, bar - 1)
        end
      end
    end
  end
  if existing then
    table.insert(out, existing)
    table.insert(out, 0)
  else
    if key ~= '' then redis.call('SET', P .. 'key:' .. key, id) end
    local prio, vis = ARGV[i + 4], ARGV[i + 5]
    redis.call('HSET', P .. 'item:' .. id, 'body', ARGV[i + 1], 'enc', ARGV[i + 2],
      'key', key, 'prio', prio, 'attempts', 0, 'max', ARGV[i + 6], 'enq', now,
      'state', 'queued', 'token', '', 'err', '')
    if tonumber(vis) > tonumber(now) then
      redis.call('ZADD', P .. 'delayed', vis, id)
    else
      redis.call('ZADD', P .. 'ready', ready_score(prio, vis), id)
    end
    created = created + 1
    table.insert(out, id)
    table.insert(out, 1)
  end
end
count('put', created, now)
return out
"""
)

# ARGV: prefix, now, n, visibility, token
_LEASE = (
    _LUA_COMMON
    + """
local now, n, vis, token = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local batch = __BATCH__
-- expired leases: queued again at once, or dead when out of attempts (decide_expiry)
local expired = redis.call('ZRANGEBYSCORE', P .. 'leased', '-inf', '(' .. now, 'LIMIT', 0, batch)
local dead = 0
for _, id in ipairs(expired) do
  local ik = P .. 'item:' .. id
  local f = redis.call('HMGET', ik, 'attempts', 'max', 'prio')
  redis.call('ZREM', P .. 'leased', id)
  if tonumber(f[1]) >= tonumber(f[2]) then
    redis.call('HSET', ik, 'state', 'dead', 'token', '', 'err', 'lease expired', 'died', now)
    redis.call('ZADD', P .. 'dead', now, id)
    dead = dead + 1
  else
    redis.call('HSET', ik, 'state', 'queued', 'token', '', 'err', 'lease expired')
    redis.call('ZADD', P .. 'ready', ready_score(f[3], now), id)
  end
end
count('dead', dead, now)
-- delayed and backed-off items whose time has come
local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'WITHSCORES',
  'LIMIT', 0, batch)
for i = 1, #due, 2 do
  local id = due[i]
  redis.call('ZREM', P .. 'delayed', id)
  local prio = redis.call('HGET', P .. 'item:' .. id, 'prio')
  redis.call('ZADD', P .. 'ready', ready_score(prio, due[i + 1]), id)
end
local popped = redis.call('ZPOPMIN', P .. 'ready', n)
local out = {}
local deadline = tonumber(now) + vis
local sdeadline = string.format('%.6f', deadline)
for i = 1, #popped, 2 do
  local id = popped[i]
  local ik = P .. 'item:' .. id
  local tok = token .. ':' .. ((i - 1) / 2)
  local attempts = redis.call('HINCRBY', ik, 'attempts', 1)
  redis.call('HSET', ik, 'state', 'leased', 'token', tok)
  redis.call('ZADD', P .. 'leased', sdeadline, id)
  local f = redis.call('HMGET', ik, 'body', 'enc', 'key', 'prio', 'max', 'enq')
  table.insert(out, {id, f[1], f[2], f[3], f[4], attempts, f[5], f[6], tok})
end
return {sdeadline, out}
""".replace("__BATCH__", str(RECLAIM_BATCH))
)

# ARGV: prefix, now, key_ttl_ms, then id, token pairs
_ACK = (
    _LUA_COMMON
    + """
local now, ttl = ARGV[2], tonumber(ARGV[3])
local out = {}
local acked = 0
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local ik = P .. 'item:' .. id
  local f = redis.call('HMGET', ik, 'state', 'token', 'key')
  if f[1] == 'leased' and f[2] == token then
    redis.call('ZREM', P .. 'leased', id)
    redis.call('DEL', ik)
    if f[3] and f[3] ~= '' then
      if ttl > 0 then
        -- the logical expiry follows the callers' clock; PEXPIRE only collects the garbage
        local expires = string.format('%.6f', tonumber(now) + ttl / 1000)
        redis.call('SET', P .. 'key:' .. f[3], id .. '|' .. expires, 'PX', ttl)
      else
        redis.call('DEL', P .. 'key:' .. f[3])
      end
    end
    acked = acked + 1
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
count('ack', acked, now)
return out
"""
)

# ARGV: prefix, now, id, token, visible_at ('' = dead), error
_NACK = (
    _LUA_COMMON
    + """
local now, id, token, vis, err = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ik = P .. 'item:' .. id
local f = redis.call('HMGET', ik, 'state', 'token')
if f[1] ~= 'leased' or f[2] ~= token then return 0 end
redis.call('ZREM', P .. 'leased', id)
count('fail', 1, now)
if vis == '' then
  redis.call('HSET', ik, 'state', 'dead', 'token', '', 'err', err, 'died', now)
  redis.call('ZADD', P .. 'dead', now, id)
  count('dead', 1, now)
else
  redis.call('HSET', ik, 'state', 'failed', 'token', '', 'err', err)
  redis.call('ZADD', P .. 'delayed', vis, id)
end
return 1
"""
)

# ARGV: prefix, deadline, then id, token pairs
_EXTEND = """
local P, deadline = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local f = redis.call('HMGET', P .. 'item:' .. id, 'state', 'token')
  if f[1] == 'leased' and f[2] == token then
    redis.call('ZADD', P .. 'leased', 'XX', deadline, id)
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
"""

# ARGV: prefix, now, then ids (none = all)
_REQUEUE = (
    _LUA_COMMON
    + """
local ids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do table.insert(ids, ARGV[i]) end
else
  ids = redis.call('ZRANGE', P .. 'dead', 0, -1)
end
local moved = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', P .. 'dead', id) == 1 then
    local ik = P .. 'item:' .. id
    redis.call('HSET', ik, 'state', 'queued', 'attempts', 0)
    redis.call('ZADD', P .. 'ready', ready_score(redis.call('HGET', ik, 'prio'), ARGV[2]), id)
    moved = moved + 1
  end
end
return moved
"""
)

_PURGE = """
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1] .. '*', 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do redis.call('DEL', k) end
until cursor == '0'
return 1
"""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisQueueBackend(QueueBackend):
    """Queues in the redis server at ``url`` (``redis://host:port/db``)."""

    def __init__(self, url: str) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # pragma: no cover - redis is in the [redis] extra
            raise ConfigError(
                "redis:// queues need the redis package: pip install podkit[redis]"
            ) from exc
        self.url = url
        try:
            self._redis: Any = aioredis.from_url(url, decode_responses=False)
        except ValueError as exc:
            raise ConfigError(f"invalid redis URL {url!r}: {exc}") from exc
        self._scripts = {
            name: self._redis.register_script(source)
            for name, source in (
                ("put", _PUT),
                ("lease", _LEASE),
                ("ack", _ACK),
                ("nack", _NACK),
                ("extend", _EXTEND),
                ("requeue", _REQUEUE),
                ("purge", _PURGE),
            )
        }

    @staticmethod
    def prefix(queue: str) -> str:
        return f"podkit:q:{{{queue}}}:"

    async def _call(self, script: str, args: Sequence[Any]) -> Any:
        import redis.exceptions as rex

        try:
            return await self._scripts[script](keys=[], args=list(args))
        except (rex.ConnectionError, rex.TimeoutError) as exc:
            raise BackendUnavailable(f"redis queue {self.url}: {exc}") from exc
        except rex.RedisError as exc:
            raise BackendError(f"redis queue {self.url}: {exc}") from exc

    async def put(self, queue: str, items: Sequence[NewItem], *, now: float) -> list[PutResult]:
        args: list[Any] = [self.prefix(queue), repr(now)]
        for item in items:
            args += [
                item.id,
                item.body,
                item.encoding,
                item.key or "",
                item.priority,
                repr(item.visible_at),
                item.max_attempts,
            ]
        raw = await self._call("put", args)
        return [PutResult(_s(raw[i]), bool(raw[i + 1])) for i in range(0, len(raw), 2)]

    async def lease(
        self, queue: str, n: int, *, now: float, visibility: float, token: str
    ) -> list[LeasedRecord]:
        deadline_raw, rows = await self._call(
            "lease", [self.prefix(queue), repr(now), n, repr(visibility), token]
        )
        deadline = float(_s(deadline_raw))
        return [
            LeasedRecord(
                id=_s(row[0]),
                body=bytes(row[1]),
                encoding=cast(Encoding, _s(row[2])),
                key=_s(row[3]) or None,
                priority=int(row[4]),
                attempt=int(row[5]),
                max_attempts=int(row[6]),
                enqueued_at=float(row[7]),
                token=_s(row[8]),
                deadline=deadline,
            )
            for row in rows
        ]

    async def ack(
        self, queue: str, receipts: Sequence[tuple[str, str]], *, now: float, key_ttl: float
    ) -> list[bool]:
        if not receipts:
            return []
        args: list[Any] = [self.prefix(queue), repr(now), int(key_ttl * 1000)]
        for item_id, token in receipts:
            args += [item_id, token]
        return [bool(x) for x in await self._call("ack", args)]

    async def nack(
        self,
        queue: str,
        receipt: tuple[str, str],
        *,
        now: float,
        visible_at: float | None,
        error: str,
    ) -> bool:
        vis = "" if visible_at is None else repr(visible_at)
        args = [self.prefix(queue), repr(now), receipt[0], receipt[1], vis, error]
        return bool(await self._call("nack", args))

    async def extend(
        self, queue: str, receipts: Sequence[tuple[str, str]], *, deadline: float
    ) -> list[bool]:
        if not receipts:
            return []
        args: list[Any] = [self.prefix(queue), repr(deadline)]
        for item_id, token in receipts:
            args += [item_id, token]
        return [bool(x) for x in await self._call("extend", args)]

    async def counts(self, queue: str, *, now: float) -> QueueStats:
        import redis.exceptions as rex

        p = self.prefix(queue)
        _, window = rate_buckets(now)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zcard(p + "ready")
                pipe.zcount(p + "delayed", "-inf", repr(now))
                pipe.zcard(p + "delayed")
                pipe.zcard(p + "leased")
                pipe.zcard(p + "dead")
                pipe.hgetall(p + "totals")
                for bucket in window:
                    pipe.hgetall(f"{p}rate:{bucket}")
                res = await pipe.execute()
        except (rex.ConnectionError, rex.TimeoutError) as exc:
            raise BackendUnavailable(f"redis queue {self.url}: {exc}") from exc
        except rex.RedisError as exc:
            raise BackendError(f"redis queue {self.url}: {exc}") from exc
        ready, due, delayed_all, leased, dead, totals_raw = res[:6]
        totals = {_s(k): int(v) for k, v in totals_raw.items()}
        rates = dict.fromkeys(STAT_KINDS, 0)
        for bucket in res[6:]:
            for k, v in bucket.items():
                rates[_s(k)] = rates.get(_s(k), 0) + int(v)
        delayed = int(delayed_all) - int(due)
        return build_counts(int(ready) + int(due), delayed, int(leased), int(dead), rates, totals)

    async def dead(self, queue: str, *, limit: int) -> list[DeadRecord]:
        import redis.exceptions as rex

        p = self.prefix(queue)
        try:
            ids = await self._redis.zrange(p + "dead", 0, max(0, limit - 1))
            async with self._redis.pipeline(transaction=False) as pipe:
                for item_id in ids:
                    pipe.hgetall(p + "item:" + _s(item_id))
                rows = await pipe.execute()
        except (rex.ConnectionError, rex.TimeoutError) as exc:
            raise BackendUnavailable(f"redis queue {self.url}: {exc}") from exc
        except rex.RedisError as exc:
            raise BackendError(f"redis queue {self.url}: {exc}") from exc
        records: list[DeadRecord] = []
        for item_id, h in zip(ids, rows, strict=True):
            if not h:
                continue
            records.append(
                DeadRecord(
                    id=_s(item_id),
                    body=bytes(h[b"body"]),
                    encoding=cast(Encoding, _s(h[b"enc"])),
                    key=_s(h[b"key"]) or None,
                    priority=int(h[b"prio"]),
                    attempts=int(h[b"attempts"]),
                    max_attempts=int(h[b"max"]),
                    enqueued_at=float(h[b"enq"]),
                    died_at=float(h.get(b"died", b"0")),
                    error=_s(h.get(b"err", b"")),
                )
            )
        return records

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None, *, now: float) -> int:
        if ids is not None and not ids:
            return 0
        return int(await self._call("requeue", [self.prefix(queue), repr(now), *(ids or [])]))

    async def purge(self, queue: str) -> None:
        await self._call("purge", [self.prefix(queue)])

    async def aclose(self) -> None:
        await self._redis.aclose()


__all__ = ["RedisQueueBackend"]
