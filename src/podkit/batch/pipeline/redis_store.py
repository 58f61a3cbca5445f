"""The Redis pipeline store: Streams with consumer groups, for workers on many machines.

Each subscription (``TOPIC>STAGE``) is a stream with one consumer group; a lease is
``XREADGROUP`` (new entries) after ``XPENDING``/``XCLAIM`` of entries idle longer than the
visibility timeout (their workers died), in one Lua script that also dead-letters entries
delivered ``max_deliveries`` times. A commit is one Lua script: it checks that every input
entry is still pending for this worker's consumer, then ``XACK``s and ``XDEL``s them, ``XADD``s
the outputs to every subscription of their topics, moves the group counts and writes a
barrier's accumulators. Firing a barrier reads the group and its accumulators under
``WATCH`` and writes the result, the new group and the fired mark in one ``MULTI``.

An entry is one pack of items (fields ``g`` group, ``n`` count, ``b`` JSON array; see
:mod:`~podkit.batch.pipeline.store`); the hashes ``n`` and ``l`` count the items of each
subscription and those leased, since a stream's length counts packs. A lease takes whole
packs while they fit in the items asked for (peeking at the next new entry with ``XRANGE``).

Every key of a pipeline shares the hash tag ``{NAME}``: ``pk:{NAME}:...``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from podkit.batch.pipeline.barrier import GroupState, Outcome
from podkit.batch.pipeline.store import (
    DEFAULT_MAX_DELIVERIES,
    MAX_ERROR_CHARS,
    Conflict,
    DeadRecord,
    Message,
    PipelineStore,
    Results,
    StageCounts,
    Step,
    Topology,
    decode_acc,
    encode,
    encode_acc,
    pack,
    step_outputs,
)
from podkit.errors import BackendError, BackendUnavailable, UsageError

CONSUMER_GROUP = "w"
MAX_FIRE_RETRIES = 100  # WATCH conflicts while firing one barrier before giving up this round

_LEASE = """
local prefix, consumer = ARGV[1], ARGV[2]
local n, idle, maxd, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local out = {}
local taken = 0
local function field(entry, name)
  for i = 1, #entry, 2 do if entry[i] == name then return entry[i + 1] end end
  return nil
end
local function last_delivered(key)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == 'w' then return info['last-delivered-id'] end
  end
  return '0-0'
end
for i, key in ipairs(KEYS) do
  local sub = ARGV[6 + i]
  local stage = string.match(sub, ">([^>]*)$")
  if taken < n then
    local pending = redis.call('XPENDING', key, 'w', 'IDLE', idle, '-', '+', n - taken)
    for _, p in ipairs(pending) do
      local id, deliveries = p[1], tonumber(p[4])
      local entry = redis.call('XRANGE', key, id, id)
      if #entry == 0 then
        redis.call('XACK', key, 'w', id)
      else
        local fields = entry[1][2]
        local count = tonumber(field(fields, 'n'))
        if deliveries >= maxd then
          local grp, body = field(fields, 'g'), field(fields, 'b')
          redis.call('XACK', key, 'w', id)
          redis.call('XDEL', key, id)
          redis.call('HINCRBY', prefix .. 'n', sub, -count)
          redis.call('HINCRBY', prefix .. 'l', sub, -count)
          local record = cjson.encode({stage = stage, sub = sub, id = id, group = grp,
            body = body, error = 'leased ' .. deliveries ..
            ' times without a commit (its workers died)', died_at = tonumber(now)})
          redis.call('HSET', prefix .. 'dead', sub .. '|' .. id, record)
          redis.call('ZADD', prefix .. 'deadz', now, sub .. '|' .. id)
          redis.call('HINCRBY', prefix .. 'g:' .. grp, 'failed', count)
          redis.call('HINCRBY', prefix .. 'st:' .. stage, 'dead', count)
        elseif taken == 0 or taken + count <= n then
          redis.call('XCLAIM', key, 'w', consumer, 0, id)
          table.insert(out, {sub, id, field(fields, 'g'), field(fields, 'b'), deliveries + 1})
          taken = taken + count
        end
      end
    end
  end
  local last = nil
  while taken < n do
    if taken > 0 then
      -- Peek at the next new pack: take it only if it fits.
      if last == nil then last = last_delivered(key) end
      local nxt = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', 1)
      if #nxt == 0 then break end
      if taken + tonumber(field(nxt[1][2], 'n')) > n then break end
    end
    local r = redis.call('XREADGROUP', 'GROUP', 'w', consumer, 'COUNT', 1, 'STREAMS', key, '>')
    if not r then break end
    local e = r[1][2][1]
    local count = tonumber(field(e[2], 'n'))
    redis.call('HINCRBY', prefix .. 'l', sub, count)
    table.insert(out, {sub, e[1], field(e[2], 'g'), field(e[2], 'b'), 1})
    taken = taken + count
    last = e[1]
  end
end
return out
"""

_COMMIT = """
local prefix = ARGV[1]
local c = cjson.decode(ARGV[2])
local function skey(sub) return prefix .. 's:' .. sub end
for _, a in ipairs(c.acks) do
  local p = redis.call('XPENDING', skey(a[1]), 'w', a[2], a[2], 1)
  if #p == 0 or p[1][2] ~= c.consumer then return 0 end
  local entry = redis.call('XRANGE', skey(a[1]), a[2], a[2])
  if #entry == 0 then return 0 end
  local fields = entry[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'n' and tonumber(fields[i + 1]) ~= a[3] then return -2 end
  end
end
if c.version ~= cjson.null then
  local v = tonumber(redis.call('GET', prefix .. 'v:' .. c.stage) or '0')
  if c.version > v then return -1 end
  if v ~= c.version then
    -- Only accumulators written after the worker read them conflict.
    for _, a in ipairs(c.accs) do
      local w = redis.call('HGET', prefix .. 'av:' .. c.stage .. ':' .. a[1], a[2])
      if w and tonumber(w) > c.version then return -1 end
    end
  end
end
for _, a in ipairs(c.acks) do
  redis.call('XACK', skey(a[1]), 'w', a[2])
  redis.call('XDEL', skey(a[1]), a[2])
  redis.call('HINCRBY', prefix .. 'n', a[1], -a[3])
  redis.call('HINCRBY', prefix .. 'l', a[1], -a[3])
end
for _, x in ipairs(c.adds) do
  redis.call('XADD', skey(x[1]), '*', 'g', x[2], 'n', x[4], 'b', x[3])
  redis.call('HINCRBY', prefix .. 'n', x[1], x[4])
end
for _, o in ipairs(c.outs) do redis.call('RPUSH', prefix .. 'o:' .. o[1], o[2]) end
for _, g in ipairs(c.groups) do
  local key = prefix .. 'g:' .. g[1]
  redis.call('SADD', prefix .. 'groups', g[1])
  redis.call('HINCRBY', key, 'created', g[2])
  redis.call('HINCRBY', key, 'done', g[3])
  redis.call('HINCRBY', key, 'failed', g[4])
end
for _, d in ipairs(c.dead) do
  local record = cjson.encode({stage = c.stage, sub = d[1], id = d[2], group = d[3], body = d[4],
    ids = {d[2]}, error = d[5], died_at = c.now})
  redis.call('HSET', prefix .. 'dead', d[1] .. '|' .. d[2], record)
  redis.call('ZADD', prefix .. 'deadz', c.now, d[1] .. '|' .. d[2])
end
local touched = false
local written = tonumber(redis.call('GET', prefix .. 'v:' .. c.stage) or '0') + 1
for _, a in ipairs(c.accs) do
  if redis.call('SISMEMBER', prefix .. 'fired', c.stage .. '|' .. a[1]) == 0 then
    redis.call('HSET', prefix .. 'a:' .. c.stage .. ':' .. a[1], a[2], a[3])
    redis.call('HSET', prefix .. 'av:' .. c.stage .. ':' .. a[1], a[2], written)
  end
  touched = true
end
for _, b in ipairs(c.absorbed) do
  if redis.call('SISMEMBER', prefix .. 'fired', c.stage .. '|' .. b[1]) == 0 then
    redis.call('HINCRBY', prefix .. 'b:' .. c.stage, b[1], b[2])
  end
  touched = true
end
if touched then redis.call('INCR', prefix .. 'v:' .. c.stage) end
local st = prefix .. 'st:' .. c.stage
redis.call('HINCRBY', st, 'items_in', c.stats[1])
redis.call('HINCRBY', st, 'items_out', c.stats[2])
redis.call('HINCRBY', st, 'retries', c.stats[3])
redis.call('HINCRBY', st, 'dead', c.stats[4])
return 1
"""


def _dead_items(record: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The items of a dead record with their ids: one item of a failed commit, or every
    item of a pack leased too often (``PACK:INDEX``)."""
    values = json.loads(record["body"])
    ids = record.get("ids") or [f"{record['id']}:{i}" for i in range(len(values))]
    return list(zip(ids, values, strict=True))


class RedisPipelineStore(PipelineStore):
    """The pipeline ``name`` in the Redis server at ``url``.

    Raises:
        UsageError: the ``redis`` package is not installed.
    """

    def __init__(self, url: str, name: str, topology: Topology) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise UsageError("redis:// needs the redis extra: pip install 'podkit[redis]'") from exc
        self._redis_module = redis
        self.url = url
        self.name = name
        self.topology = topology
        self.prefix = f"pk:{{{name}}}:"
        self.consumer = uuid.uuid4().hex
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self._lease = self.client.register_script(_LEASE)
        self._commit = self.client.register_script(_COMMIT)
        self._groups_ready: set[str] = set()
        self._closed = False

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        redis = self._redis_module
        try:
            return fn(*args, **kwargs)
        except redis.ConnectionError as exc:
            raise BackendUnavailable(f"redis at {self.url}: {exc}") from exc
        except redis.RedisError as exc:
            raise BackendError(f"redis at {self.url}: {exc}") from exc

    def _skey(self, sub: str) -> str:
        return f"{self.prefix}s:{sub}"

    def _ensure_groups(self, subs: Sequence[str]) -> None:
        for sub in subs:
            if sub in self._groups_ready:
                continue
            try:
                self.client.xgroup_create(self._skey(sub), CONSUMER_GROUP, id="0", mkstream=True)
            except self._redis_module.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise BackendError(f"redis at {self.url}: {exc}") from exc
            except self._redis_module.ConnectionError as exc:
                raise BackendUnavailable(f"redis at {self.url}: {exc}") from exc
            self._groups_ready.add(sub)

    def _put(self, pipe: Any, topic: str, group: str, values: Sequence[Any]) -> int:
        """Queue on ``pipe`` the packs of values of one group for a topic; the children."""
        subs = self.topology.subs.get(topic, ())
        for body, n in pack(values, self.topology.pack, self.topology.pack_bytes):
            for sub in subs:
                pipe.xadd(self._skey(sub), {"g": group, "n": n, "b": body})
                pipe.hincrby(self.prefix + "n", sub, n)
            if topic in self.topology.outputs:
                pipe.rpush(f"{self.prefix}o:{topic}", body)
        return len(subs) * len(values)

    def _all_subs(self) -> list[str]:
        return [s for subs in self.topology.subs.values() for s in subs]

    def feed(self, items: Sequence[tuple[str, str, Any]], groups: Sequence[str]) -> bool:
        self._ensure_groups(self._all_subs())

        def apply(pipe: Any) -> bool:
            if pipe.hget(self.prefix + "meta", "fed"):
                return False
            created: dict[str, int] = dict.fromkeys(groups, 0)
            by_target: dict[tuple[str, str], list[Any]] = {}
            for topic, group, value in items:
                by_target.setdefault((topic, group), []).append(value)
            pipe.multi()
            for (topic, group), values in by_target.items():
                created[group] = created.get(group, 0) + self._put(pipe, topic, group, values)
            for group, n in created.items():
                pipe.sadd(self.prefix + "groups", group)
                pipe.hincrby(f"{self.prefix}g:{group}", "created", n)
                pipe.hset(f"{self.prefix}g:{group}", "sealed", 1)
            pipe.hset(self.prefix + "meta", "fed", 1)
            return True

        result: bool = self._call(
            self.client.transaction, apply, self.prefix + "meta", value_from_callable=True
        )
        return result

    def put(self, items: Sequence[tuple[str, str, Any]]) -> int:
        self._ensure_groups(self._all_subs())
        created: dict[str, int] = {}

        by_target: dict[tuple[str, str], list[Any]] = {}
        for topic, group, value in items:
            by_target.setdefault((topic, group), []).append(value)

        def apply(pipe: Any) -> None:
            created.clear()
            pipe.multi()
            for (topic, group), values in by_target.items():
                created[group] = created.get(group, 0) + self._put(pipe, topic, group, values)
            for group, n in created.items():
                pipe.sadd(self.prefix + "groups", group)
                pipe.hincrby(f"{self.prefix}g:{group}", "created", n)

        self._call(self.client.transaction, apply)
        return sum(created.values())

    def lease(
        self,
        subs: Sequence[str],
        n: int,
        *,
        now: float,
        visibility: float,
        token: str,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    ) -> list[Message]:
        if not subs:
            return []
        self._ensure_groups(subs)
        rows = self._call(
            self._lease,
            keys=[self._skey(s) for s in subs],
            args=[
                self.prefix,
                self.consumer,
                n,
                int(visibility * 1000),
                max_deliveries,
                now,
                *subs,
            ],
        )
        messages: list[Message] = []
        consumer = self.consumer
        for sub, id_, grp, body, delivery in rows:
            d = int(delivery)
            messages.extend(
                Message(sub, f"{id_}:{i}", grp, v, d, consumer, id_)
                for i, v in enumerate(json.loads(body))
            )
        return messages

    def commit(self, stage: str, step: Step, *, now: float, version: int | None = None) -> bool:
        groups: dict[str, list[int]] = {}
        adds: list[list[Any]] = []
        outs: list[list[str]] = []
        out = 0
        limit = self.topology.pack
        for (topic, group), values in step_outputs(step).items():
            subs = self.topology.subs.get(topic, ())
            for body, n in pack(values, limit, self.topology.pack_bytes):
                adds.extend([sub, group, body, n] for sub in subs)
                if topic in self.topology.outputs:
                    outs.append([topic, body])
            out += len(values)
            groups.setdefault(group, [0, 0, 0])[0] += len(subs) * len(values)
        for m, _ in step.done:
            g = groups.get(m.group)
            if g is None:
                g = groups[m.group] = [0, 0, 0]
            g[1] += 1
        for m, _ in step.dead:
            groups.setdefault(m.group, [0, 0, 0])[2] += 1
        # Handed back unprocessed: a new pack, the same children of their group.
        requeued: dict[tuple[str, str], list[Any]] = {}
        for m in step.requeue:
            requeued.setdefault((m.sub, m.group), []).append(m.value)
        for (sub, group), values in requeued.items():
            adds.extend([sub, group, body, n] for body, n in pack(values, len(values)))
        covered: dict[tuple[str, str], int] = {}
        for m in step.messages():
            key = (m.sub, m.pack)
            covered[key] = covered.get(key, 0) + 1
        payload = {
            "consumer": self.consumer,
            "stage": stage,
            "version": version,
            "now": now,
            "acks": [[sub, pack_id, n] for (sub, pack_id), n in covered.items()],
            "adds": adds,
            "outs": outs,
            "groups": [[g, *counts] for g, counts in groups.items()],
            "dead": [
                [m.sub, m.id, m.group, f"[{encode(m.value)}]", error[:MAX_ERROR_CHARS]]
                for m, error in step.dead
            ],
            "accs": [[g, k, encode_acc(v)] for (g, k), v in step.accumulators.items()],
            "absorbed": [[g, n] for g, n in step.absorbed.items()],
            "stats": [len(step.done) + len(step.dead), out, step.retries, len(step.dead)],
        }
        result = int(self._call(self._commit, keys=[], args=[self.prefix, encode(payload)]))
        if result == -1:
            raise Conflict(stage)
        if result == -2:
            raise ValueError("a step must cover every item of the packs it leased")
        return result == 1

    def accumulators(
        self, stage: str, pairs: Sequence[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], Any], int]:
        by_group: dict[str, list[str]] = {}
        for group, key in pairs:
            by_group.setdefault(group, []).append(key)
        pipe = self.client.pipeline(transaction=True)
        pipe.get(f"{self.prefix}v:{stage}")
        for group, keys in by_group.items():
            pipe.hmget(f"{self.prefix}a:{stage}:{group}", keys)
        version, *replies = self._call(pipe.execute)
        found: dict[tuple[str, str], Any] = {}
        for (group, keys), values in zip(by_group.items(), replies, strict=True):
            for key, value in zip(keys, values, strict=True):
                if value is not None:
                    found[(group, key)] = decode_acc(value)
        return found, int(version or 0)

    def open_barriers(self, stage: str) -> list[str]:
        names: list[str] = self._call(self.client.hkeys, f"{self.prefix}b:{stage}")
        return names

    @staticmethod
    def _state(raw: Mapping[str, str]) -> GroupState:
        return GroupState(
            created=int(raw.get("created", 0)),
            done=int(raw.get("done", 0)),
            failed=int(raw.get("failed", 0)),
            sealed=raw.get("sealed") == "1",
        )

    def group(self, name: str) -> GroupState | None:
        raw = self._call(self.client.hgetall, f"{self.prefix}g:{name}")
        return self._state(raw) if raw else None

    def fire(
        self,
        stage: str,
        group: str,
        *,
        decide: Callable[[GroupState], Outcome | None],
        results: Results,
        outputs: Sequence[str],
    ) -> Outcome | None:
        redis = self._redis_module
        gkey = f"{self.prefix}g:{group}"
        akey = f"{self.prefix}a:{stage}:{group}"
        bkey = f"{self.prefix}b:{stage}"
        fired = f"{stage}|{group}"
        derived = f"{group}/{stage}"
        # A look without WATCH first: most calls find the group still running.
        state = self.group(group)
        if state is None or decide(state) is None:
            return None
        for _ in range(MAX_FIRE_RETRIES):
            pipe = self.client.pipeline(transaction=True)
            try:
                pipe.watch(gkey, akey, bkey, self.prefix + "fired")  # type: ignore[no-untyped-call]
                if pipe.sismember(self.prefix + "fired", fired):
                    return None
                raw: dict[str, str] = pipe.hgetall(gkey)  # type: ignore[assignment]
                if not raw:
                    return None
                state = self._state(raw)
                outcome = decide(state)
                if outcome is None:
                    return None
                items = int(pipe.hget(bkey, group) or 0)
                stored: dict[str, str] = pipe.hgetall(akey)  # type: ignore[assignment]
                accs = sorted((k, decode_acc(v)) for k, v in stored.items())
                counts = {"items": items, "done": state.done, "failed": state.failed}
                values = results(group, outcome, accs, counts)
                pipe.multi()
                children = emitted = 0
                for topic in outputs:
                    if values:
                        children += self._put(pipe, topic, derived, values)
                    emitted += len(values)
                pipe.sadd(self.prefix + "groups", derived)
                pipe.hset(f"{self.prefix}g:{derived}", mapping={"created": children, "sealed": 1})
                pipe.sadd(self.prefix + "fired", fired)
                pipe.hset(self.prefix + "outcomes", fired, outcome.value)
                pipe.delete(akey, f"{self.prefix}av:{stage}:{group}")
                pipe.hdel(bkey, group)
                pipe.hincrby(f"{self.prefix}st:{stage}", "fired", 1)
                pipe.hincrby(f"{self.prefix}st:{stage}", "items_out", emitted)
                pipe.execute()
                return outcome
            except redis.WatchError:
                continue
            except redis.ConnectionError as exc:
                raise BackendUnavailable(f"redis at {self.url}: {exc}") from exc
            except redis.RedisError as exc:
                raise BackendError(f"redis at {self.url}: {exc}") from exc
            finally:
                pipe.reset()
        return None

    def backlog(self, subs: Sequence[str]) -> int:
        if not subs:
            return 0
        counts = self._call(self.client.hmget, self.prefix + "n", list(subs))
        return sum(int(n or 0) for n in counts)

    def counts(self, stages: Sequence[str], subs: Mapping[str, Sequence[str]]) -> list[StageCounts]:
        result = []
        for stage in stages:
            raw = self._call(self.client.hgetall, f"{self.prefix}st:{stage}")
            mine = list(subs.get(stage, ()))
            total = self.backlog(mine)
            leased = 0
            if mine:
                held = self._call(self.client.hmget, self.prefix + "l", mine)
                leased = sum(int(n or 0) for n in held)
            result.append(
                StageCounts(
                    stage,
                    items_in=int(raw.get("items_in", 0)),
                    items_out=int(raw.get("items_out", 0)),
                    retries=int(raw.get("retries", 0)),
                    dead=int(raw.get("dead", 0)),
                    fired=int(raw.get("fired", 0)),
                    pending=total - leased,
                    leased=leased,
                )
            )
        return result

    def groups(self) -> dict[str, GroupState]:
        names = sorted(self._call(self.client.smembers, self.prefix + "groups"))
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(f"{self.prefix}g:{name}")
        return {
            name: self._state(raw)
            for name, raw in zip(names, self._call(pipe.execute), strict=True)
        }

    def dead(self, stage: str | None = None, *, limit: int = 100) -> list[DeadRecord]:
        keys = self._call(self.client.zrange, self.prefix + "deadz", 0, -1)
        records: list[DeadRecord] = []
        if not keys:
            return records
        for raw in self._call(self.client.hmget, self.prefix + "dead", keys):
            if raw is None:
                continue
            r = json.loads(raw)
            if stage is not None and r["stage"] != stage:
                continue
            for item_id, value in _dead_items(r):
                records.append(
                    DeadRecord(
                        r["stage"],
                        r["sub"],
                        item_id,
                        r["group"],
                        value,
                        r["error"],
                        float(r["died_at"]),
                    )
                )
            if len(records) >= limit:
                break
        return records[:limit]

    def redrive(self, stage: str | None = None, ids: Sequence[str] | None = None) -> int:
        keys = self._call(self.client.zrange, self.prefix + "deadz", 0, -1)
        wanted = set(ids) if ids is not None else None
        moved = 0
        raws = self._call(self.client.hmget, self.prefix + "dead", keys) if keys else []
        for member, raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            r = json.loads(raw)
            if stage is not None and r["stage"] != stage:
                continue
            items = _dead_items(r)
            back = [(i, v) for i, v in items if wanted is None or i in wanted]
            if not back:
                continue
            kept = [(i, v) for i, v in items if wanted is not None and i not in wanted]
            pipe = self.client.pipeline(transaction=True)
            if kept:  # the rest of a pack's dead letters stay
                rest = {**r, "ids": [i for i, _ in kept], "body": encode([v for _, v in kept])}
                pipe.hset(self.prefix + "dead", member, encode(rest))
            else:
                pipe.hdel(self.prefix + "dead", member)
                pipe.zrem(self.prefix + "deadz", member)
            body = encode([v for _, v in back])
            pipe.xadd(self._skey(r["sub"]), {"g": r["group"], "n": len(back), "b": body})
            pipe.hincrby(self.prefix + "n", r["sub"], len(back))
            pipe.hincrby(f"{self.prefix}g:{r['group']}", "failed", -len(back))
            self._call(pipe.execute)
            moved += len(back)
        return moved

    def outputs(self, topic: str) -> list[Any]:
        return [
            value
            for body in self._call(self.client.lrange, f"{self.prefix}o:{topic}", 0, -1)
            for value in json.loads(body)
        ]

    def heartbeat(self, worker: str, pid: int, *, now: float) -> None:
        self._call(self.client.hset, self.prefix + "workers", worker, f"{pid} {now}")

    def workers(self) -> dict[str, tuple[int, float]]:
        raw = self._call(self.client.hgetall, self.prefix + "workers")
        found: dict[str, tuple[int, float]] = {}
        for name, value in raw.items():
            pid, beat = value.split()
            found[name] = (int(pid), float(beat))
        return found

    def reset(self) -> None:
        keys = list(self._call(self.client.scan_iter, match=f"pk:{{{self.name}}}:*"))
        if keys:
            self._call(self.client.delete, *keys)
        self._groups_ready.clear()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()
