"""The sharding proxy's connections: client and upstream protocols and the reply slots.

Theory of operation. Every client connection parses its bytes into requests (the protocol
cores) and keeps one *reply slot* per request in a queue, in the order the requests came:
replies leave in that order whatever order the shards answer in, so pipelining works.

A request is routed by :class:`~podkit.ambassador.shard.ShardRouter` and written to an
*upstream connection*: each shard has ``server_connections`` of them, shared by every
client (a client always uses the same one per shard, so its own requests to a shard stay in
order). An upstream connection keeps a FIFO of the slots it owes a reply; memcached replies
carry no id, so the head of the FIFO also says which kind of reply to read next. Writes to
the upstreams and to the clients are gathered and sent once per connection after every
socket that was ready has been read (:meth:`ProxyState.schedule_flush`), so a pipeline of N
requests costs a few system calls, not N.

Requests on many keys (``get a b c``, ``MGET``, ``MSET``, ``DEL``...) are split by shard
and their replies merged in the order asked. Failures have an answer, never a hang: an
upstream that refuses, closes, or leaves requests unanswered for ``timeout`` fails every
request it holds (a read then tries its next shard if it has one) and counts one failure
for its shard; ``fail_limit`` failures in a row eject the shard for ``retry_after``.

This module has no coroutine: it is compiled with mypyc along with the protocol cores (see
``scripts/build-native.sh``); the proxy's tasks live in :mod:`._proxy`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from podkit.ambassador.shard import _memcache as mc
from podkit.ambassador.shard import _resp as resp
from podkit.ambassador.shard._redis_commands import SPECS, Route, same_shard_keys

if TYPE_CHECKING:
    from podkit.ambassador.shard._router import ShardRouter

VERSION_REPLY = b"VERSION 1.6.0-podkit-shard\r\n"


class Counters:
    """The proxy's counters (read by the metrics)."""

    def __init__(self) -> None:
        self.connections_total = 0
        self.refused = 0
        self.commands = 0
        self.faults = 0  # malformed, unsupported or over-limit requests answered locally
        self.failures = 0  # requests answered with an error for a failed shard
        self.timeouts = 0
        self.upstream_connects = 0
        self.hot_fills = 0


class ShardFailure:
    """A shard did not answer (refused, closed, timed out): what a waiting slot receives."""

    def __init__(self, shard: str, reason: str) -> None:
        self.shard = shard
        self.reason = reason


# -- reply slots ------------------------------------------------------------------------------


class _Slot:
    """One reply a client is owed, in the client's order. ``data`` is set when known."""

    def __init__(self, client: _Client | None, data: bytes | None = None) -> None:
        self.client = client
        self.data = data

    def finish(self, data: bytes) -> None:
        self.data = data
        client = self.client
        if client is not None:
            client.proxy.dirty.add(client)

    def deliver(self, index: int, reply: Any, shard: str) -> None:
        """An upstream's reply (or a :class:`ShardFailure`) for the part ``index``."""
        raise NotImplementedError


class _Discard(_Slot):
    """A request whose reply nobody waits for (a hot copy's fill or invalidation)."""

    def deliver(self, index: int, reply: Any, shard: str) -> None:
        pass


class _Single(_Slot):
    """One request to one shard; a failed read moves on to the next candidate shard."""

    def __init__(
        self,
        client: _Client,
        payload: bytes,
        candidates: list[str],
        kind: mc.ReplyKind | None,
        *,
        quiet: bool = False,
    ) -> None:
        super().__init__(client)
        self.payload = payload
        self.candidates = candidates
        self.kind = kind
        self.quiet = quiet

    def deliver(self, index: int, reply: Any, shard: str) -> None:
        client = self.client
        assert client is not None
        if isinstance(reply, ShardFailure):
            self.candidates.pop(0)
            if self.candidates:
                client.proxy.send(client, self.candidates[0], self.payload, self, 0, self.kind)
                return
            client.proxy.counters.failures += 1
            self.finish(b"" if self.quiet else client.failure(reply))
            return
        raw = reply.raw if isinstance(reply, mc.Reply) else reply
        self.finish(b"" if self.quiet else raw)


class _Fanout(_Slot):
    """One write sent to several shards (replicas, hot copies): the client gets the first
    shard's reply when it answered, else the first reply that came back."""

    def __init__(self, client: _Client, parts: int, quiet: bool) -> None:
        super().__init__(client)
        self.replies: list[Any] = [None] * parts
        self.waiting = parts
        self.quiet = quiet

    def deliver(self, index: int, reply: Any, shard: str) -> None:
        self.replies[index] = reply
        self.waiting -= 1
        if self.waiting:
            return
        client = self.client
        assert client is not None
        chosen = next((r for r in self.replies if not isinstance(r, ShardFailure)), None)
        if chosen is None:
            client.proxy.counters.failures += 1
            data = client.failure(self.replies[0])
        else:
            data = chosen.raw if isinstance(chosen, mc.Reply) else chosen
        self.finish(b"" if self.quiet else data)


class _Gather(_Slot):
    """A request split over shards; ``merge`` builds the reply once every part is in."""

    def __init__(self, client: _Client, parts: int, merge: Any) -> None:
        super().__init__(client)
        self.replies: list[Any] = [None] * parts
        self.waiting = parts
        self.merge = merge

    def deliver(self, index: int, reply: Any, shard: str) -> None:
        self.replies[index] = reply
        self.waiting -= 1
        if self.waiting:
            return
        client = self.client
        assert client is not None
        failed = next((r for r in self.replies if isinstance(r, ShardFailure)), None)
        if failed is not None:
            client.proxy.counters.failures += 1
            self.finish(client.failure(failed))
            return
        self.finish(self.merge(self.replies))


class _Read(_Slot):
    """A read of one or many keys (memcached ``get``, Redis ``GET``/``MGET``), in rounds.

    Each key has its candidate shards (replicas, hot copies) best first. A round sends one
    request per shard for the keys that shard is first for; a shard that fails moves its
    keys to their next candidate; a key missing from a hot key's extra copy is asked from
    its own shard next round and, when found there, copied back (a *fill*).
    """

    def __init__(self, client: _Client, ops: _ReadOps, candidates: dict[bytes, list[str]]):
        super().__init__(client)
        self.ops = ops
        self.candidates = candidates
        self.found: dict[bytes, Any] = {}
        self.fills: list[tuple[bytes, str]] = []
        self.round_keys: list[tuple[str, list[bytes]]] = []
        self.waiting = 0

    def start(self) -> None:
        client = self.client
        assert client is not None
        groups: dict[str, list[bytes]] = {}
        for key, cands in self.candidates.items():
            if key not in self.found:
                groups.setdefault(cands[0], []).append(key)
        self.round_keys = list(groups.items())
        self.waiting = len(self.round_keys)
        proxy = client.proxy
        for index, (shard, keys) in enumerate(self.round_keys):
            proxy.send(client, shard, self.ops.request(keys), self, index, self.ops.kind)

    def deliver(self, index: int, reply: Any, shard: str) -> None:
        client = self.client
        assert client is not None
        if self.data is not None:
            return  # already answered (an error in another part)
        keys = self.round_keys[index][1]
        self.waiting -= 1
        if isinstance(reply, ShardFailure):
            for key in keys:
                cands = self.candidates[key]
                cands.pop(0)
                if not cands:
                    client.proxy.counters.failures += 1
                    self.finish(client.failure(reply))
                    return
        else:
            values = self.ops.split(keys, reply)
            if isinstance(values, bytes):  # an error reply: passed on as the answer
                self.finish(values)
                return
            router = client.proxy.router
            for key in keys:
                value = values.get(key)
                cands = self.candidates[key]
                if value is None and len(cands) > 1 and router.hot_copy(key, shard):
                    # A hot key's extra copy does not have it (yet): ask its own shard.
                    cands.pop(0)
                    while len(cands) > 1 and router.hot_copy(key, cands[0]):
                        cands.pop(0)
                    self.fills.append((key, shard))
                    continue
                self.found[key] = value
        if self.waiting:
            return
        if len(self.found) < len(self.candidates):
            self.start()
            return
        proxy = client.proxy
        for key, shard_ in self.fills:
            value = self.found.get(key)
            if value is not None:
                fill = self.ops.fill(key, value, proxy.hot_ttl)
                if fill is not None:
                    proxy.counters.hot_fills += 1
                    proxy.send(None, shard_, fill, _Discard(None), 0, self.ops.kind_of_fill)
        self.finish(self.ops.combine(self.found))


class _ReadOps:
    """How one kind of read is asked, cut per key, answered and copied to a hot copy."""

    def __init__(self) -> None:
        self.kind: mc.ReplyKind | None = None
        self.kind_of_fill: mc.ReplyKind | None = None

    def request(self, keys: list[bytes]) -> bytes:
        raise NotImplementedError

    def split(self, keys: list[bytes], reply: Any) -> dict[bytes, Any] | bytes:
        raise NotImplementedError

    def combine(self, found: dict[bytes, Any]) -> bytes:
        raise NotImplementedError

    def fill(self, key: bytes, value: Any, ttl: float) -> bytes | None:
        return None


class _MemcacheGet(_ReadOps):
    def __init__(self, request: mc.Request) -> None:
        super().__init__()
        self.kind = mc.ReplyKind.VALUES
        self.kind_of_fill = mc.ReplyKind.LINE
        self.req = request

    def request(self, keys: list[bytes]) -> bytes:
        return self.req.encode(keys)

    def split(self, keys: list[bytes], reply: Any) -> dict[bytes, Any] | bytes:
        assert isinstance(reply, mc.Reply)
        if reply.error:
            return reply.raw
        return dict(reply.items)

    def combine(self, found: dict[bytes, Any]) -> bytes:
        parts = [found[k] for k in self.req.keys if found.get(k) is not None]
        parts.append(b"END\r\n")
        return b"".join(parts)

    def fill(self, key: bytes, value: Any, ttl: float) -> bytes | None:
        return mc.item_as_set(value, max(1, round(ttl)))


class _RedisGet(_ReadOps):
    def __init__(self, keys: list[bytes], *, multi: bool) -> None:
        super().__init__()
        self.keys = keys
        self.multi = multi

    def request(self, keys: list[bytes]) -> bytes:
        if not self.multi:
            return resp.encode_command([b"GET", *keys])
        return resp.encode_command([b"MGET", *keys])

    def split(self, keys: list[bytes], reply: Any) -> dict[bytes, Any] | bytes:
        assert isinstance(reply, bytes)
        if resp.is_error(reply):
            return reply
        if not self.multi:
            return {keys[0]: None if reply == b"$-1\r\n" else reply}
        items = resp.array_items(reply) or []
        return {k: (None if v == b"$-1\r\n" else v) for k, v in zip(keys, items, strict=False)}

    def combine(self, found: dict[bytes, Any]) -> bytes:
        if not self.multi:
            value = found.get(self.keys[0])
            return b"$-1\r\n" if value is None else cast(bytes, value)
        return resp.array([found.get(k) or b"$-1\r\n" for k in self.keys])

    def fill(self, key: bytes, value: Any, ttl: float) -> bytes | None:
        raw = cast(bytes, value)
        if not raw.startswith(b"$"):
            return None
        body = raw[raw.index(b"\r\n") + 2 : -2]
        return resp.encode_command([b"SET", key, body, b"PX", b"%d" % max(1, round(ttl * 1000))])


# -- upstream connections ---------------------------------------------------------------------


class _Upstream(asyncio.Protocol):
    """One connection to a shard, shared by many clients; replies come back in FIFO order."""

    def __init__(self, proxy: ProxyState, shard: str) -> None:
        self.proxy = proxy
        self.shard = shard
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[tuple[_Slot, int, mc.ReplyKind | None]] = deque()
        self.out: list[bytes] = []
        self.closed = False
        self.progress = 0.0  # loop time of the last reply (or of the first request waiting)
        self.memcache = proxy.memcache
        self.mc_reader = mc.ReplyReader(max_value=max(proxy.max_value * 2, 1 << 20))
        self.resp_reader = resp.ReplyReader()
        self.task: Any = None  # the connecting task, owned by the proxy's task group

    def send(self, data: bytes, slot: _Slot, index: int, kind: mc.ReplyKind | None) -> None:
        if not self.waiting:
            self.progress = self.proxy.clock()
        self.waiting.append((slot, index, kind))
        if not self.out:
            self.proxy.dirty_upstreams.append(self)
        self.out.append(data)

    def flush(self) -> None:
        if self.transport is not None and self.out and not self.closed:
            self.transport.write(b"".join(self.out))
            self.out.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.closed:
            self.transport.close()
            return
        self.flush()

    def data_received(self, data: bytes) -> None:
        proxy = self.proxy
        waiting = self.waiting
        try:
            if self.memcache:
                reader = self.mc_reader
                reader.feed(data)
                while waiting:
                    slot, index, kind = waiting[0]
                    assert kind is not None
                    reply: Any = reader.next_reply(kind)
                    if reply is None:
                        break
                    waiting.popleft()
                    slot.deliver(index, reply, self.shard)
            else:
                rreader = self.resp_reader
                rreader.feed(data)
                while waiting:
                    reply = rreader.next_reply()
                    if reply is None:
                        break
                    slot, index, _ = waiting.popleft()
                    slot.deliver(index, reply, self.shard)
        except (mc.UpstreamProtocolError, resp.UpstreamProtocolError) as exc:
            self.fail(f"protocol error: {exc}")
        else:
            self.progress = proxy.clock()
            if self.shard in proxy.router.health:
                proxy.router.record_success(self.shard, self.progress)
        proxy.schedule_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.fail("connection closed" if exc is None else f"connection lost: {exc}")
            self.proxy.schedule_flush()

    def fail(self, reason: str) -> None:
        """Fail every request this connection holds and count one failure for its shard."""
        if self.closed:
            return
        self.closed = True
        proxy = self.proxy
        proxy.forget(self)
        if self.transport is not None:
            self.transport.abort()
        router = proxy.router
        if self.shard in router.health and router.record_failure(self.shard, proxy.clock()):
            proxy.log_ejection(self.shard, reason)
        self.out.clear()
        failure = ShardFailure(self.shard, reason)
        waiting = self.waiting
        while waiting:
            slot, index, _ = waiting.popleft()
            slot.deliver(index, failure, self.shard)


# -- client connections -----------------------------------------------------------------------


class _Client(asyncio.Protocol):
    """One client connection: requests in, replies out in the order asked."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.slots: deque[_Slot] = deque()
        self.index = 0
        self.closing = False
        self.closed = False
        self.paused = False  # reading paused: too many replies owed, or the socket is full
        self.write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        proxy = self.proxy
        proxy.counters.connections_total += 1
        if len(proxy.clients) >= proxy.max_connections or proxy.draining:
            proxy.counters.refused += 1
            self.transport.abort()
            self.closed = True
            return
        proxy.clients.add(self)
        self.index = proxy.next_index()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.clients.discard(self)
        self.slots.clear()
        if not self.proxy.clients and self.proxy.idle is not None:
            self.proxy.idle.set()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.closed:
            return
        self.handle_all(data)
        proxy = self.proxy
        proxy.dirty.add(self)
        proxy.schedule_flush()
        if len(self.slots) >= proxy.max_pending and not self.paused:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def handle_all(self, data: bytes) -> None:
        raise NotImplementedError

    def failure(self, failure: ShardFailure) -> bytes:
        raise NotImplementedError

    def reply(self, data: bytes) -> None:
        """Queue an answer known now (a local command, a fault)."""
        self.slots.append(_Slot(None, data))

    def close_after_replies(self) -> None:
        self.closing = True

    def flush(self) -> None:
        """Write every reply at the head of the queue that is complete."""
        if self.closed or self.transport is None:
            return
        slots = self.slots
        out = []
        while slots:
            data = slots[0].data
            if data is None:
                break
            slots.popleft()
            if data:
                out.append(data)
        if out:
            self.transport.write(b"".join(out))
        if (self.closing or self.proxy.draining) and not slots:
            # Draining: a client is closed as soon as it is owed nothing.
            self.transport.close()
            return
        if self.paused and not self.write_paused and len(slots) < self.proxy.max_pending // 2:
            self.paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.flush()


class _MemcacheClient(_Client):
    def __init__(self, proxy: ProxyState) -> None:
        super().__init__(proxy)
        self.parser = mc.RequestParser(
            max_key=proxy.max_key, max_value=proxy.max_value, max_line=mc.DEFAULT_MAX_LINE_BYTES
        )

    def failure(self, failure: ShardFailure) -> bytes:
        return mc.server_error(f"shard {failure.shard} unavailable: {failure.reason}")

    def handle_all(self, data: bytes) -> None:
        proxy = self.proxy
        counters = proxy.counters
        now = proxy.clock()
        router = proxy.router
        for item in self.parser.feed(data):
            if self.closing:
                break
            counters.commands += 1
            if isinstance(item, mc.Fault):
                counters.faults += 1
                self.reply(item.reply)
                if item.close:
                    self.close_after_replies()
                continue
            if item.local is not None:
                self.local(item)
                continue
            if item.command == b"mg":
                targets = router.read_targets(item.keys[0], now, spread=False)
                if not targets:
                    self.no_shard(False)
                    continue
                payload = item.encode()
                meta = _Single(self, payload, targets, mc.ReplyKind.META)
                self.slots.append(meta)
                proxy.send(self, targets[0], payload, meta, 0, mc.ReplyKind.META)
                continue
            if item.command in mc.RETRIEVAL:
                spread = item.command == b"get"
                candidates: dict[bytes, list[str]] = {}
                for key in item.keys:
                    if key not in candidates:
                        targets = router.read_targets(key, now, spread=spread)
                        if not targets:
                            break
                        candidates[key] = targets
                else:
                    first = next(iter(candidates.values()))
                    if len(first) == 1 and all(
                        t == first for t in candidates.values()
                    ):  # every key on one shard, with no other candidate: forward as it is
                        payload = item.encode()
                        slot: _Slot = _Single(self, payload, first, mc.ReplyKind.VALUES)
                        self.slots.append(slot)
                        proxy.send(self, first[0], payload, slot, 0, mc.ReplyKind.VALUES)
                        continue
                    read = _Read(self, _MemcacheGet(item), candidates)
                    self.slots.append(read)
                    read.start()
                    continue
                self.no_shard(item.noreply)
                continue
            self.write(item, now)

    def no_shard(self, quiet: bool) -> None:
        self.proxy.counters.failures += 1
        self.reply(b"" if quiet else mc.server_error("no shard available"))

    def write(self, item: mc.Request, now: float) -> None:
        proxy = self.proxy
        key = item.keys[0]
        delete = item.command == b"delete" or item.command == b"md"
        targets = proxy.router.write_targets(key, now, delete=delete)
        if not targets:
            self.no_shard(item.noreply)
            return
        payload = item.encode()
        kind = item.reply_kind
        if len(targets) == 1:
            slot: _Slot = _Single(self, payload, targets, kind, quiet=item.noreply)
            self.slots.append(slot)
            proxy.send(self, targets[0], payload, slot, 0, kind)
            return
        fan = _Fanout(self, len(targets), item.noreply)
        self.slots.append(fan)
        replicas = proxy.router.replicas
        for index, shard in enumerate(targets):
            data = payload
            if index >= replicas:  # a hot key's extra copy
                data = self.hot_copy_write(item, payload, proxy.hot_ttl)
            proxy.send(self, shard, data, fan, index, kind)

    @staticmethod
    def hot_copy_write(item: mc.Request, payload: bytes, ttl: float) -> bytes:
        """What a hot key's extra copy receives for a write: a ``set`` with its expiry
        capped at the hot TTL, a delete for anything else (it is filled again on a read)."""
        if item.command == b"set":
            exptime = int(item.args[2])
            cap = max(1, round(ttl))
            if exptime >= 0 and (exptime == 0 or exptime > cap):
                return item.with_exptime(b"%d" % cap).encode()
            return payload
        if item.command == b"delete" or item.command == b"md":
            return payload
        if item.command in mc.META:
            return b"md " + item.keys[0] + b"\r\n"
        return b"delete " + item.keys[0] + b"\r\n"

    def local(self, item: mc.Request) -> None:
        if item.local is mc.Local.VERSION:
            self.reply(VERSION_REPLY)
        elif item.local is mc.Local.QUIT:
            self.close_after_replies()
        elif item.local is mc.Local.NOOP:
            self.reply(b"MN\r\n")
        else:
            self.reply(b"" if item.noreply else b"OK\r\n")


class _RedisClient(_Client):
    def __init__(self, proxy: ProxyState) -> None:
        super().__init__(proxy)
        self.parser = resp.CommandParser(max_value=proxy.max_value)

    def failure(self, failure: ShardFailure) -> bytes:
        return resp.error(f"shard {failure.shard} unavailable: {failure.reason}")

    def handle_all(self, data: bytes) -> None:
        proxy = self.proxy
        counters = proxy.counters
        now = proxy.clock()
        for item in self.parser.feed(data):
            if self.closing:
                break
            counters.commands += 1
            if isinstance(item, resp.Fault):
                counters.faults += 1
                self.reply(item.reply)
                if item.close:
                    self.close_after_replies()
                continue
            self.command(item, now)

    def refuse(self, message: str) -> None:
        self.proxy.counters.faults += 1
        self.reply(resp.error(message))

    def command(self, item: resp.Command, now: float) -> None:
        args = item.args
        name = args[0].upper()
        spec = SPECS.get(name)
        shown = name.decode("latin-1")
        if spec is None:
            self.refuse(f"unsupported command '{shown}' (podkit shard)")
            return
        route = spec.route
        if route is Route.LOCAL:
            self.local(name, args)
            return
        if len(args) < 2 or (route is Route.SPLIT and name == b"MSET" and len(args) % 2 == 0):
            self.refuse(f"wrong number of arguments for '{shown.lower()}' command")
            return
        max_key = self.proxy.max_key
        if route is Route.SINGLE:
            if len(args[1]) > max_key:
                self.refuse(f"key too long (at most {max_key} bytes)")
                return
            self.single(item, spec.write, now)
        elif route is Route.SPLIT:
            keys = args[1::2] if name == b"MSET" else args[1:]
            if any(len(k) > max_key for k in keys):
                self.refuse(f"key too long (at most {max_key} bytes)")
                return
            self.split(name, args, now)
        else:
            keys_of = same_shard_keys(name, spec, args)
            if keys_of is None:
                self.refuse(f"wrong number of arguments for '{shown.lower()}' command")
                return
            router = self.proxy.router
            if len({router.shard_of(k) for k in keys_of}) > 1:
                self.refuse(f"{shown} keys are on different shards (give them one hash tag)")
                return
            self.single(item, spec.write, now, key=keys_of[0])

    def local(self, name: bytes, args: list[bytes]) -> None:
        if name == b"PING":
            self.reply(b"+PONG\r\n" if len(args) == 1 else resp.bulk(args[1]))
        elif name == b"ECHO":
            if len(args) != 2:
                self.refuse("wrong number of arguments for 'echo' command")
            else:
                self.reply(resp.bulk(args[1]))
        elif name == b"SELECT":
            if len(args) == 2 and args[1] == b"0":
                self.reply(b"+OK\r\n")
            else:
                self.refuse("SELECT: only database 0 is available through podkit shard")
        else:  # QUIT
            self.reply(b"+OK\r\n")
            self.close_after_replies()

    def single(self, item: resp.Command, write: bool, now: float, *, key: bytes = b"") -> None:
        proxy = self.proxy
        router = proxy.router
        key = key or item.args[1]
        if not write:
            plain_get = item.args[0].upper() == b"GET" and len(item.args) == 2
            targets = router.read_targets(key, now, spread=plain_get)
            if not targets:
                self.no_shard()
                return
            if plain_get and len(targets) > 1 and proxy.hot_possible:
                read = _Read(self, _RedisGet([key], multi=False), {key: targets})
                self.slots.append(read)
                read.start()
                return
            slot: _Slot = _Single(self, item.raw, targets, None)
            self.slots.append(slot)
            proxy.send(self, targets[0], item.raw, slot, 0, None)
            return
        targets = router.write_targets(key, now)
        if not targets:
            self.no_shard()
            return
        if len(targets) == 1:
            slot = _Single(self, item.raw, targets, None)
            self.slots.append(slot)
            proxy.send(self, targets[0], item.raw, slot, 0, None)
            return
        fan = _Fanout(self, len(targets), False)
        self.slots.append(fan)
        for index, shard in enumerate(targets):
            data = item.raw
            if index >= router.replicas:
                data = self.hot_copy_write(item, proxy.hot_ttl)
            proxy.send(self, shard, data, fan, index, None)

    @staticmethod
    def hot_copy_write(item: resp.Command, ttl: float) -> bytes:
        """A hot key's extra copy gets a plain ``SET`` with a PX of the hot TTL, and a
        ``DEL`` for any other write (it is filled again on a read)."""
        args = item.args
        if args[0].upper() == b"SET" and len(args) == 3:
            return resp.encode_command([b"SET", args[1], args[2], b"PX", b"%d" % (ttl * 1000)])
        return resp.encode_command([b"DEL", args[1]])

    def no_shard(self) -> None:
        self.proxy.counters.failures += 1
        self.reply(resp.error("no shard available"))

    def split(self, name: bytes, args: list[bytes], now: float) -> None:
        proxy = self.proxy
        router = proxy.router
        if name == b"MGET":
            keys = args[1:]
            candidates: dict[bytes, list[str]] = {}
            for key in keys:
                if key not in candidates:
                    targets = router.read_targets(key, now, spread=proxy.hot_possible)
                    if not targets:
                        self.no_shard()
                        return
                    candidates[key] = targets
            read = _Read(self, _RedisGet(keys, multi=True), candidates)
            self.slots.append(read)
            read.start()
            return
        if name in (b"EXISTS", b"TOUCH"):
            groups: dict[str, list[bytes]] = {}
            for key in args[1:]:
                targets = router.read_targets(key, now, spread=False)
                if not targets:
                    self.no_shard()
                    return
                groups.setdefault(targets[0], []).append(key)
            self.gather(name, groups, _sum_integers)
            return
        # Writes: MSET pairs, DEL/UNLINK keys. The key's own shards (the first `replicas`)
        # answer; a hot key's extra copies are sent a DEL whose reply nobody counts.
        pairs = list(zip(args[1::2], args[2::2], strict=True)) if name == b"MSET" else None
        keys = args[1::2] if pairs is not None else args[1:]
        counted: dict[str, list[bytes]] = {}
        extra: dict[str, list[bytes]] = {}
        replicas = router.replicas
        for position, key in enumerate(keys):
            targets = router.write_targets(key, now, delete=True)
            if not targets:
                self.no_shard()
                return
            for index, shard in enumerate(targets):
                if index >= replicas:
                    extra.setdefault(shard, []).append(key)
                elif pairs is not None:
                    counted.setdefault(shard, []).extend(pairs[position])
                elif index == 0:
                    counted.setdefault(shard, []).append(key)
                else:
                    extra.setdefault(shard, []).append(key)
        merge = _all_ok if name == b"MSET" else _sum_integers
        self.gather(name, counted, merge)
        for shard, dropped in extra.items():
            proxy.send(
                None, shard, resp.encode_command([b"DEL", *dropped]), _Discard(None), 0, None
            )

    def gather(self, name: bytes, groups: dict[str, list[bytes]], merge: Any) -> None:
        proxy = self.proxy
        if len(groups) == 1:  # one shard: its reply is already the whole answer
            [(shard, part)] = groups.items()
            payload = resp.encode_command([name, *part])
            slot: _Slot = _Single(self, payload, [shard], None)
            self.slots.append(slot)
            proxy.send(self, shard, payload, slot, 0, None)
            return
        gathered = _Gather(self, len(groups), merge)
        self.slots.append(gathered)
        for index, (shard, part) in enumerate(groups.items()):
            proxy.send(self, shard, resp.encode_command([name, *part]), gathered, index, None)


def _sum_integers(replies: list[Any]) -> bytes:
    total = 0
    for reply in replies:
        value = resp.integer_value(reply)
        if value is None:
            return cast(bytes, reply)
        total += value
    return resp.integer(total)


def _all_ok(replies: list[Any]) -> bytes:
    for reply in replies:
        if reply != b"+OK\r\n":
            return cast(bytes, reply)
    return b"+OK\r\n"


# -- the state every connection shares ---------------------------------------------------------


class ProxyState:
    """What the connections of one proxy share: the router, the counters, the upstream
    connections of every shard, and the connections waiting to be written to.

    Args:
        router: the placement and health decisions.
        shards: the shard names.
        memcache: memcached text protocol (else RESP).
        server_connections: connections per shard.
        max_key, max_value, max_pending, max_connections, hot_ttl: the limits.
        clock: the event loop's clock.
        call_soon: the event loop's ``call_soon``.
        open_upstream: starts connecting a new upstream connection (the proxy's task).
        on_ejection: told ``(shard, reason)`` when a shard is ejected.
    """

    def __init__(
        self,
        router: ShardRouter,
        shards: list[str],
        *,
        memcache: bool,
        server_connections: int,
        max_key: int,
        max_value: int,
        max_pending: int,
        max_connections: int,
        hot_ttl: float,
        clock: Callable[[], float],
        call_soon: Callable[[Callable[[], None]], object],
        open_upstream: Callable[[_Upstream], None],
        on_ejection: Callable[[str, str], None],
    ) -> None:
        self.router = router
        self.memcache = memcache
        self.max_key = max_key
        self.max_value = max_value
        self.max_pending = max_pending
        self.max_connections = max_connections
        self.hot_ttl = hot_ttl
        self.hot_possible = router.hot_keys is not None
        self.clock = clock
        self._call_soon = call_soon
        self._open_upstream = open_upstream
        self._on_ejection = on_ejection
        self.counters = Counters()
        self.clients: set[_Client] = set()
        self.dirty: set[_Client] = set()
        self.dirty_upstreams: list[_Upstream] = []
        self.upstreams: dict[str, list[_Upstream | None]] = {
            name: [None] * server_connections for name in shards
        }
        self.draining = False
        self.idle: asyncio.Event | None = None
        self._index = 0
        self._flush_scheduled = False

    def next_index(self) -> int:
        self._index += 1
        return self._index

    def send(
        self,
        client: _Client | None,
        shard: str,
        data: bytes,
        slot: _Slot,
        index: int,
        kind: mc.ReplyKind | None,
    ) -> None:
        """Queue ``data`` for ``shard``; ``slot.deliver(index, ...)`` gets the reply."""
        if kind is None and self.memcache:
            kind = mc.ReplyKind.LINE
        conns = self.upstreams.get(shard)
        if conns is None:  # removed from the shard list while the request was routed
            slot.deliver(index, ShardFailure(shard, "shard removed from the shard list"), shard)
            return
        at = (client.index if client is not None else 0) % len(conns)
        conn = conns[at]
        if conn is None or conn.closed:
            conn = _Upstream(self, shard)
            conns[at] = conn
            self._open_upstream(conn)
        conn.send(data, slot, index, kind)

    def forget(self, conn: _Upstream) -> None:
        conns = self.upstreams.get(conn.shard, [])
        for i, each in enumerate(conns):
            if each is conn:
                conns[i] = None

    def log_ejection(self, shard: str, reason: str) -> None:
        self._on_ejection(shard, reason)

    def schedule_flush(self) -> None:
        """Write what waits for the upstreams and the clients once, after every socket that
        is ready now was read: one system call per connection, not per request."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        dirty = self.dirty_upstreams
        while dirty:
            dirty.pop().flush()
        clients = self.dirty
        while clients:
            clients.pop().flush()

    def expire(self, timeout: float) -> int:
        """Fail the upstream connections whose requests waited longer than ``timeout``;
        returns how many."""
        now = self.clock()
        expired = [
            conn
            for conns in self.upstreams.values()
            for conn in conns
            if conn is not None and conn.waiting and now - conn.progress > timeout
        ]
        for conn in expired:
            self.counters.timeouts += 1
            conn.fail(f"no reply within {timeout:g}s")
        if expired:
            self.schedule_flush()
        return len(expired)
