"""The Redis pipeline store: Streams with consumer groups, for workers on many machines.

Each subscription (``TOPIC>STAGE``) is a stream with one consumer group; a lease is
``XREADGROUP`` (new entries) after ``XPENDING``/``XCLAIM`` of entries idle longer than the
visibility timeout (their workers died), in one Lua script that also dead-letters entries
delivered ``max_deliveries`` times. A commit is one Lua script: it checks that every input
entry is still pending for this worker's consumer, then ``XACK``s and ``XDEL``s them, ``XADD``s
the outputs to every subscription of their topics, moves the group counts and writes a
barrier's accumulators. Firing a barrier reads the group and its accumulators under
``WATCH`` and writes the result, the new group and the fired mark in one ``MULTI``.

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
    encode,
)
from podkit.errors import BackendError, BackendUnavailable, UsageError

CONSUMER_GROUP = "w"
MAX_FIRE_RETRIES = 100  # WATCH conflicts while firing one barrier before giving up this round

_LEASE = """
local prefix, consumer = ARGV[1], ARGV[2]
local n, idle, maxd, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local out = {}
local function field(entry, name)
  for i = 1, #entry, 2 do if entry[i] == name then return entry[i + 1] end end
  return nil
end
for i, key in ipairs(KEYS) do
  local sub = ARGV[6 + i]
  local stage = string.match(sub, ">([^>]*)$")
  if #out < n then
    local pending = redis.call('XPENDING', key, 'w', 'IDLE', idle, '-', '+', n - #out)
    for _, p in ipairs(pending) do
      local id, deliveries = p[1], tonumber(p[4])
      local entry = redis.call('XRANGE', key, id, id)
      if #entry == 0 then
        redis.call('XACK', key, 'w', id)
      elseif deliveries >= maxd then
        local grp, body = field(entry[1][2], 'g'), field(entry[1][2], 'b')
        redis.call('XACK', key, 'w', id)
        redis.call('XDEL', key, id)
        local record = cjson.encode({stage = stage, sub = sub, id = id, group = grp, body = body,
          error = 'leased ' .. deliveries .. ' times without a commit (its workers died)',
          died_at = tonumber(now)})
        redis.call('HSET', prefix .. 'dead', sub .. '|' .. id, record)
        redis.call('ZADD', prefix .. 'deadz', now, sub .. '|' .. id)
        redis.call('HINCRBY', prefix .. 'g:' .. grp, 'failed', 1)
        redis.call('HINCRBY', prefix .. 'st:' .. stage, 'dead', 1)
      else
        redis.call('XCLAIM', key, 'w', consumer, 0, id)
        local fields = entry[1][2]
        table.insert(out, {sub, id, field(fields, 'g'), field(fields, 'b'), deliveries + 1})
      end
    end
  end
  if #out < n then
    local r = redis.call('XREADGROUP', 'GROUP', 'w', consumer, 'COUNT', n - #out,
      'STREAMS', key, '>')
    if r then
      for _, e in ipairs(r[1][2]) do
        table.insert(out, {sub, e[1], field(e[2], 'g'), field(e[2], 'b'), 1})
      end
    end
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
end
if c.version ~= cjson.null then
  local v = tonumber(redis.call('GET', prefix .. 'v:' .. c.stage) or '0')
  if v ~= c.version then return -1 end
end
for _, a in ipairs(c.acks) do
  redis.call('XACK', skey(a[1]), 'w', a[2])
  redis.call('XDEL', skey(a[1]), a[2])
end
for _, x in ipairs(c.adds) do redis.call('XADD', skey(x[1]), '*', 'g', x[2], 'b', x[3]) end
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
    error = d[5], died_at = c.now})
  redis.call('HSET', prefix .. 'dead', d[1] .. '|' .. d[2], record)
  redis.call('ZADD', prefix .. 'deadz', c.now, d[1] .. '|' .. d[2])
end
local touched = false
for _, a in ipairs(c.accs) do
  if redis.call('SISMEMBER', prefix .. 'fired', c.stage .. '|' .. a[1]) == 0 then
    redis.call('HSET', prefix .. 'a:' .. c.stage .. ':' .. a[1], a[2], a[3])
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

    def _all_subs(self) -> list[str]:
        return [s for subs in self.topology.subs.values() for s in subs]

    def feed(self, items: Sequence[tuple[str, str, Any]], groups: Sequence[str]) -> bool:
        self._ensure_groups(self._all_subs())

        def apply(pipe: Any) -> bool:
            if pipe.hget(self.prefix + "meta", "fed"):
                return False
            created: dict[str, int] = dict.fromkeys(groups, 0)
            pipe.multi()
            for topic, group, value in items:
                body = encode(value)
                for sub in self.topology.subs.get(topic, ()):
                    pipe.xadd(self._skey(sub), {"g": group, "b": body})
                if topic in self.topology.outputs:
                    pipe.rpush(f"{self.prefix}o:{topic}", body)
                created[group] = created.get(group, 0) + self.topology.children(topic)
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
        return [
            Message(sub, id_, grp, json.loads(body), int(delivery), self.consumer, id_)
            for sub, id_, grp, body, delivery in rows
        ]

    def commit(self, stage: str, step: Step, *, now: float, version: int | None = None) -> bool:
        groups: dict[str, list[int]] = {}
        adds: list[list[str]] = []
        outs: list[list[str]] = []
        out = 0
        for m, outputs in step.done:
            children = 0
            for topic, value in outputs:
                body = encode(value)
                for sub in self.topology.subs.get(topic, ()):
                    adds.append([sub, m.group, body])
                    children += 1
                if topic in self.topology.outputs:
                    outs.append([topic, body])
            out += len(outputs)
            g = groups.setdefault(m.group, [0, 0, 0])
            g[0] += children
            g[1] += 1
        for m, _ in step.dead:
            groups.setdefault(m.group, [0, 0, 0])[2] += 1
        # Handed back unprocessed: a new entry, the same child of its group.
        adds.extend([m.sub, m.group, encode(m.value)] for m in step.requeue)
        payload = {
            "consumer": self.consumer,
            "stage": stage,
            "version": version,
            "now": now,
            "acks": [[m.sub, m.id] for m in step.messages()],
            "adds": adds,
            "outs": outs,
            "groups": [[g, *counts] for g, counts in groups.items()],
            "dead": [
                [m.sub, m.id, m.group, encode(m.value), error[:MAX_ERROR_CHARS]]
                for m, error in step.dead
            ],
            "accs": [[g, k, encode(v)] for (g, k), v in step.accumulators.items()],
            "absorbed": [[g, n] for g, n in step.absorbed.items()],
            "stats": [len(step.done) + len(step.dead), out, step.retries, len(step.dead)],
        }
        result = int(self._call(self._commit, keys=[], args=[self.prefix, encode(payload)]))
        if result == -1:
            raise Conflict(stage)
        return result == 1

    def accumulators(
        self, stage: str, pairs: Sequence[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], Any], int]:
        pipe = self.client.pipeline(transaction=True)
        pipe.get(f"{self.prefix}v:{stage}")
        for group, key in pairs:
            pipe.hget(f"{self.prefix}a:{stage}:{group}", key)
        version, *values = self._call(pipe.execute)
        found = {
            pair: json.loads(value)
            for pair, value in zip(pairs, values, strict=True)
            if value is not None
        }
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
                accs = sorted((k, json.loads(v)) for k, v in stored.items())
                counts = {"items": items, "done": state.done, "failed": state.failed}
                values = results(group, outcome, accs, counts)
                pipe.multi()
                children = emitted = 0
                for value in values:
                    body = encode(value)
                    for topic in outputs:
                        emitted += 1
                        for sub in self.topology.subs.get(topic, ()):
                            pipe.xadd(self._skey(sub), {"g": derived, "b": body})
                            children += 1
                        if topic in self.topology.outputs:
                            pipe.rpush(f"{self.prefix}o:{topic}", body)
                pipe.sadd(self.prefix + "groups", derived)
                pipe.hset(f"{self.prefix}g:{derived}", mapping={"created": children, "sealed": 1})
                pipe.sadd(self.prefix + "fired", fired)
                pipe.hset(self.prefix + "outcomes", fired, outcome.value)
                pipe.delete(akey)
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
        pipe = self.client.pipeline(transaction=False)
        for sub in subs:
            pipe.xlen(self._skey(sub))
        return sum(int(n) for n in self._call(pipe.execute))

    def counts(self, stages: Sequence[str], subs: Mapping[str, Sequence[str]]) -> list[StageCounts]:
        result = []
        for stage in stages:
            raw = self._call(self.client.hgetall, f"{self.prefix}st:{stage}")
            total = self.backlog(subs.get(stage, ()))
            leased = 0
            for sub in subs.get(stage, ()):
                try:
                    info = self.client.xpending(self._skey(sub), CONSUMER_GROUP)
                except self._redis_module.ResponseError:
                    continue  # no group yet: nothing leased
                leased += int(info["pending"])
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
            records.append(
                DeadRecord(
                    r["stage"],
                    r["sub"],
                    r["id"],
                    r["group"],
                    json.loads(r["body"]),
                    r["error"],
                    float(r["died_at"]),
                )
            )
            if len(records) >= limit:
                break
        return records

    def redrive(self, stage: str | None = None, ids: Sequence[str] | None = None) -> int:
        records = self.dead(stage, limit=10**9)
        wanted = set(ids) if ids is not None else None
        moved = 0
        for r in records:
            if wanted is not None and r.id not in wanted:
                continue
            member = f"{r.sub}|{r.id}"
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.prefix + "dead", member)
            pipe.zrem(self.prefix + "deadz", member)
            pipe.xadd(self._skey(r.sub), {"g": r.group, "b": encode(r.value)})
            pipe.hincrby(f"{self.prefix}g:{r.group}", "failed", -1)
            removed, *_ = self._call(pipe.execute)
            moved += int(removed)
        return moved

    def outputs(self, topic: str) -> list[Any]:
        return [
            json.loads(v) for v in self._call(self.client.lrange, f"{self.prefix}o:{topic}", 0, -1)
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
