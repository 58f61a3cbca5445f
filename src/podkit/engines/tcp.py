"""The TCP (L4) engine: forward each accepted connection to an upstream, bytes both ways.

Theory of operation. Each client connection gets a pair of protocols joined back to back.
The client is not read until the upstream connection is open (so nothing is buffered for a
connection that may fail); then whatever one side sends is written to the other. Flow control
is symmetric: when one side's socket buffer fills (``pause_writing``), the other side stops
being read until it drains. A FIN from one side is passed on as a FIN (``write_eof``) and the
other direction keeps flowing (half-close); the pair closes when both directions ended or
either side reset. Idle connections (no byte either way for ``idle_timeout``) are closed by a
ticker that checks deadlines a few times per second.

On Linux (``zero_copy``, the default there) each direction works on the raw sockets the way
HAProxy's ``splice-auto`` does. Small messages are copied: one ``recv`` and one ``send`` per
wake-up, which is the cheapest way to move a pipelined batch of database commands. A read that
fills ``copy_bytes`` (64 KiB) marks a bulk transfer, and from then on the direction is a kernel
pipe, filled from one socket and drained into the other with ``splice(2)``, so the bytes never
pass through Python. A direction reads while it has room (no held bytes, a pipe not full) and
writes while bytes wait; held bytes or a full pipe stop the reading (back-pressure); a FIN
with nothing left to send becomes ``shutdown(SHUT_WR)`` on the other socket (half-close).
Readiness is level triggered, so no direction reads until ``EAGAIN``: one read per wake-up,
and bytes still in the socket wake it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import inspect
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from podkit.engines._closing import finish_closing
from podkit.engines.http.client import Upstream
from podkit.errors import ListenError, PodkitError

DEFAULT_CONNECT_TIMEOUT = 5.0  # a dead upstream host; local ones connect in microseconds
DEFAULT_IDLE_TIMEOUT = 3600.0  # long-lived protocols (databases, brokers) idle for minutes
DEFAULT_MAX_CONNECTIONS = 10_000  # below a default 'ulimit -n' of a server host
PIPE_BYTES = 1 << 20  # per direction; Linux's default pipe-max-size, 16x the default pipe
# A read that fills this many bytes is a bulk transfer and the direction splices from then on;
# smaller messages (pipelined database commands) cost two system calls copied, four spliced.
DEFAULT_COPY_BYTES = 64 * 1024
SPLICE_AVAILABLE = sys.platform == "linux" and hasattr(os, "splice")
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)

TCPPick = Callable[[tuple[str, int]], Upstream | Awaitable[Upstream | None] | None]
TCPHandshake = Callable[[Upstream, socket.socket], Awaitable[None]]
"""Runs on a freshly connected (non-blocking) upstream socket before any client byte is
forwarded, e.g. to authenticate on the client's behalf; an ``OSError`` (or ``PodkitError``)
closes the client."""


async def _connect_socket(proxy: TCPProxy, upstream: Upstream) -> socket.socket:
    """A non-blocking socket connected to ``upstream`` (the caller bounds the time)."""
    loop = proxy.loop
    infos = await loop.getaddrinfo(upstream.host, upstream.port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        if proxy.source_address:
            sock.bind((proxy.source_address, 0))
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True, slots=True)
class TCPStatistics:
    """A snapshot of a TCP forwarder's counters.

    Attributes:
        connections_open: client connections open now.
        connections_total: client connections accepted.
        bytes_in: bytes received from clients (and sent upstream).
        bytes_out: bytes received from upstreams (and sent to clients).
        connect_errors: upstream connections that failed (the client was closed).
        idle_timeouts: connections closed for being idle.
        refused: connections refused at the connection limit.
    """

    connections_open: int
    connections_total: int
    bytes_in: int
    bytes_out: int
    connect_errors: int
    idle_timeouts: int
    refused: int


class _Side(asyncio.Protocol):
    """One socket of a forwarded pair."""

    def __init__(self, proxy: TCPProxy, counter: str) -> None:
        self.proxy = proxy
        self.counter = counter  # "bytes_in" for the client side, "bytes_out" for the upstream
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof = False
        self.closed = False
        self.pending: list[bytes] = []
        self.last_active = 0.0
        self.epoch = proxy.epoch  # the proxy's epoch when the client connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.proxy.counters[self.counter] += len(data)
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            return
        peer.transport.write(data)
        self.last_active = peer.last_active = self.proxy.loop.time()

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
            if peer.eof:
                self.close()
                peer.close()
                return False
        return True  # keep our sending half open: the other direction may still flow

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and not peer.closed and peer.transport is not None:
            if exc is not None:
                peer.transport.abort()  # a reset on one side is a reset on the other
            else:
                peer.transport.close()  # flushes what is buffered first

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()


class _ClientSide(_Side):
    def __init__(self, proxy: TCPProxy) -> None:
        super().__init__(proxy, "bytes_in")
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        proxy = self.proxy
        proxy.counters["connections_total"] += 1
        assert self.transport is not None
        if len(proxy.clients) >= proxy.max_connections or proxy.draining:
            proxy.counters["refused"] += 1
            self.transport.abort()
            return
        proxy.clients.add(self)
        self.transport.pause_reading()  # nothing is read until the upstream is there
        self.last_active = proxy.loop.time()
        self.task = proxy.loop.create_task(self._connect())

    async def _connect(self) -> None:
        proxy = self.proxy
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername") or ("", 0)
        try:
            upstream = await proxy.choose((str(peer[0]), int(peer[1])))
            if upstream is None:
                raise OSError("no upstream available")
            async with asyncio.timeout(proxy.connect_timeout):
                if proxy.handshake is None:
                    _, side = await proxy.loop.create_connection(
                        lambda: _Side(proxy, "bytes_out"),
                        upstream.host,
                        upstream.port,
                        local_addr=(proxy.source_address, 0) if proxy.source_address else None,
                    )
                else:
                    sock = await _connect_socket(proxy, upstream)
                    try:
                        await proxy.handshake(upstream, sock)
                    except BaseException:
                        sock.close()
                        raise
                    _, side = await proxy.loop.create_connection(
                        lambda: _Side(proxy, "bytes_out"), sock=sock
                    )
        except (OSError, TimeoutError, PodkitError):
            proxy.counters["connect_errors"] += 1
            if not self.closed:
                self.transport.abort()
            return
        if self.closed:
            if side.transport is not None:
                side.transport.close()
            return
        self.peer = side
        side.peer = self
        side.last_active = self.last_active = proxy.loop.time()
        assert side.transport is not None
        for data in self.pending:
            side.transport.write(data)
        self.pending.clear()
        if self.eof and side.transport.can_write_eof():
            side.transport.write_eof()
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.proxy.clients.discard(self)
        if self.proxy.all_closed is not None and not self.proxy.clients and not self.proxy.spliced:
            self.proxy.all_closed.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def idle_since(self) -> float:
        peer = self.peer
        return max(self.last_active, peer.last_active if peer is not None else 0.0)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.abort()


class _Direction:
    """One direction of a raw pair: ``src`` socket -> ``dst`` socket.

    It starts by copying: one ``recv`` of up to ``copy_bytes`` and one ``send`` per wake-up,
    two system calls for a small message (a pipelined batch of database commands). A read
    that fills ``copy_bytes`` marks a bulk transfer: the direction then moves its bytes with
    ``splice(2)`` through a kernel pipe, never copying them into Python. Readiness is level
    triggered, so neither mode reads until ``EAGAIN``: bytes left in the socket wake it again.
    """

    __slots__ = (
        "blocked",
        "bulk",
        "capacity",
        "copy_bytes",
        "count",
        "counter",
        "dst",
        "eof",
        "held",
        "pair",
        "pipe_r",
        "pipe_w",
        "queued",
        "reading",
        "shut",
        "src",
        "writing",
    )

    def __init__(
        self,
        pair: _SplicedPair,
        src: socket.socket,
        dst: socket.socket,
        counter: str,
        copy_bytes: int,
    ) -> None:
        self.pair = pair
        self.src = src
        self.dst = dst
        self.counter = counter
        self.copy_bytes = copy_bytes
        self.count = 0  # bytes received from src (added to the proxy's counter at close)
        self.held = b""  # copy mode: bytes received and not yet sent
        self.bulk = False  # the last read filled copy_bytes
        self.pipe_r = self.pipe_w = -1
        self.queued = 0  # splice mode: bytes in the pipe
        self.capacity = 0  # splice mode: the pipe's size
        self.blocked = False  # splice mode: the pipe cannot drain until dst is writable
        self.eof = False
        self.shut = False
        self.reading = False
        self.writing = False
        if copy_bytes <= 0:
            self.open_pipe()

    def open_pipe(self) -> None:
        """Splice from now on (the caller has sent what it held)."""
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        # The size the kernel granted: past a user's pipe-user-pages-soft it keeps pipes
        # small, and a pipe believed larger than it is would be read into while full.
        self.capacity = fcntl.fcntl(self.pipe_w, fcntl.F_GETPIPE_SZ)

    def start(self) -> None:
        self.want_read(True)

    def want_read(self, on: bool) -> None:
        if on == self.reading:
            return
        self.reading = on
        loop = self.pair.proxy.loop
        if on:
            loop.add_reader(self.src.fileno(), self.pair.step, self)
        else:
            loop.remove_reader(self.src.fileno())

    def want_write(self, on: bool) -> None:
        if on == self.writing:
            return
        self.writing = on
        loop = self.pair.proxy.loop
        if on:
            loop.add_writer(self.dst.fileno(), self.pair.step, self)
        else:
            loop.remove_writer(self.dst.fileno())

    def pump(self) -> None:
        """Move what can move now; then wait for the readiness that lets the rest move."""
        if self.pipe_r < 0:
            self._copy()
            pending = len(self.held)
            room = not pending
        else:
            self._splice()
            pending = self.queued
            room = pending < self.capacity and not (pending and self.blocked)
        if self.eof and not pending and not self.shut:
            self.shut = True
            with contextlib.suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)
        # Read while there is room (held bytes, a full pipe or one that cannot drain are the
        # back-pressure), write while bytes wait.
        self.want_read(room and not self.eof)
        self.want_write(pending > 0)

    def _copy(self) -> None:
        dst = self.dst
        if self.held:
            try:
                sent = dst.send(self.held)
            except BlockingIOError:
                return  # still full: its writability wakes us
            self.held = self.held[sent:]
            if self.held:
                return
            if self.bulk:
                self.open_pipe()  # what was held went first; the transfer splices on
                return
        if self.eof:
            return
        try:
            data = self.src.recv(self.copy_bytes)
        except BlockingIOError:
            return  # woken for writability, nothing to read yet
        if not data:
            self.eof = True
            return
        size = len(data)
        self.count += size
        self.bulk = size == self.copy_bytes
        try:
            sent = dst.send(data)
        except BlockingIOError:
            sent = 0
        if sent < size:
            self.held = data[sent:]
        elif self.bulk:
            self.open_pipe()

    def _splice(self) -> None:
        dst_fd = self.dst.fileno()
        if self.queued:
            try:
                self.queued -= os.splice(self.pipe_r, dst_fd, self.queued, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                self.blocked = True  # the destination is full: its writability wakes us
                return
            self.blocked = False
        if self.eof or self.queued >= self.capacity:
            return
        try:
            got = os.splice(
                self.src.fileno(), self.pipe_w, self.capacity - self.queued, flags=_SPLICE_FLAGS
            )
        except BlockingIOError:
            # Nothing to read, or a pipe whose slots are full of small pieces before its
            # bytes reach the capacity: with bytes queued, wait for them to drain first.
            self.blocked = self.queued > 0
            return
        if got == 0:
            self.eof = True
            return
        self.queued += got
        self.count += got
        try:
            self.queued -= os.splice(self.pipe_r, dst_fd, self.queued, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            self.blocked = True

    def close(self) -> None:
        self.want_read(False)
        self.want_write(False)
        self.pair.proxy.counters[self.counter] += self.count
        self.count = 0
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.pipe_r = self.pipe_w = -1


class _SplicedPair:
    """A client socket and an upstream socket joined by two raw directions."""

    def __init__(self, proxy: TCPProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.directions: list[_Direction] = []
        self.closed = False
        self.last_active = proxy.loop.time()
        self.seen = 0  # bytes and FINs moved when the idle ticker last looked
        self.task: asyncio.Task[None] | None = None
        self.epoch = proxy.epoch  # the proxy's epoch when the client connected

    def idle_since(self) -> float:
        # The hot path never reads the clock: the ticker notes when the pair last moved
        # (within one tick, a fraction of the idle timeout).
        moved = sum(d.count + d.eof for d in self.directions)
        if moved != self.seen:
            self.seen = moved
            self.last_active = self.proxy.loop.time()
        return self.last_active

    async def connect(self) -> None:
        proxy = self.proxy
        peer = self.client.getpeername()
        sock: socket.socket | None = None
        try:
            upstream = await proxy.choose((str(peer[0]), int(peer[1])))
            if upstream is None:
                raise OSError("no upstream available")
            async with asyncio.timeout(proxy.connect_timeout):
                sock = await _connect_socket(proxy, upstream)
                if proxy.handshake is not None:
                    await proxy.handshake(upstream, sock)
        except (OSError, TimeoutError, PodkitError):
            proxy.counters["connect_errors"] += 1
            if sock is not None:
                sock.close()
            self.abort()
            return
        if self.closed:
            sock.close()
            return
        self.upstream = sock
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.directions = [
            _Direction(self, self.client, sock, "bytes_in", proxy.copy_bytes),
            _Direction(self, sock, self.client, "bytes_out", proxy.copy_bytes),
        ]
        self.last_active = proxy.loop.time()
        for direction in self.directions:
            direction.start()

    def step(self, direction: _Direction) -> None:
        if self.closed:
            return
        try:
            direction.pump()
        except OSError:
            self.abort()  # a reset or a broken pipe on either side ends both
            return
        if all(d.shut for d in self.directions):
            self.finish()

    def finish(self) -> None:
        """Both directions ended with a FIN: close quietly."""
        self._close(reset=False)

    def abort(self) -> None:
        self._close(reset=True)

    def _close(self, *, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for direction in self.directions:
            direction.close()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
            sock.close()
        self.proxy.spliced.discard(self)
        if self.proxy.all_closed is not None and not self.proxy.clients and not self.proxy.spliced:
            self.proxy.all_closed.set()
        if (
            self.task is not None
            and not self.task.done()
            and self.task is not asyncio.current_task()
        ):
            self.task.cancel()


class TCPProxy:
    """Accept TCP connections and forward each one to an upstream.

    Use as ``async with TCPProxy(upstream, host=..., port=0) as proxy:``.

    Args:
        upstream: the upstream, or ``pick(client_address)`` returning one (sync or async;
            None closes the client).
        host: the address to listen on.
        port: the port (0 picks a free one).
        connect_timeout: seconds to connect upstream before the client is closed.
        idle_timeout: a connection with no byte either way for this long is closed.
        max_connections: client connections at once; more are closed at once.
        reuse_port: set SO_REUSEPORT so several processes share the port.
        sock: an already bound listening socket to serve on.
        registry: a Prometheus registry to export the metrics to.
        zero_copy: forward on raw sockets, splicing bulk transfers through kernel pipes
            (default: on Linux); False selects the asyncio-protocol path.
        copy_bytes: on the raw path, a read that fills this many bytes switches its
            direction to splice(2); 0 splices from the first byte.
        source_address: the local IP address upstream connections leave from.
        handshake: run on each new upstream connection before bytes flow (see
            :data:`TCPHandshake`).

    Every connection remembers :attr:`epoch` as it was when the client connected; the owner
    raises it when the upstreams change, and :meth:`close_before` ends the connections of
    earlier epochs (an environment change whose old connections have drained long enough).
    """

    def __init__(
        self,
        upstream: Upstream | TCPPick,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
        registry: CollectorRegistry | None = None,
        metrics_prefix: str = "podkit_tcp",
        name: str = "tcp",
        zero_copy: bool | None = None,
        copy_bytes: int = DEFAULT_COPY_BYTES,
        source_address: str | None = None,
        handshake: TCPHandshake | None = None,
    ) -> None:
        if copy_bytes < 0:
            raise ValueError("copy_bytes must be 0 or more")
        self.upstream = upstream
        self.copy_bytes = copy_bytes
        self.handshake = handshake
        self.epoch = 0
        self.source_address = source_address
        self.zero_copy = SPLICE_AVAILABLE if zero_copy is None else zero_copy and SPLICE_AVAILABLE
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.reuse_port = reuse_port
        self.sock = sock
        self.name = name
        self.metrics_prefix = metrics_prefix
        self.counters = {
            "connections_total": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "connect_errors": 0,
            "idle_timeouts": 0,
            "refused": 0,
        }
        self.clients: set[_ClientSide] = set()
        self.spliced: set[_SplicedPair] = set()
        self._listener: socket.socket | None = None
        self.draining = False
        self.all_closed: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._registry = registry
        self._collector: _TCPCollector | None = None
        self.loop: asyncio.AbstractEventLoop  # set by start()

    async def __aenter__(self) -> TCPProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def choose(self, client: tuple[str, int]) -> Upstream | None:
        if isinstance(self.upstream, Upstream):
            return self.upstream
        chosen = self.upstream(client)
        if inspect.isawaitable(chosen):
            chosen = await chosen
        return chosen

    async def start(self) -> None:
        """Bind and start accepting.

        Raises:
            PodkitError: the address cannot be bound.
        """
        self.loop = asyncio.get_running_loop()
        if self.zero_copy:
            self._listen_raw()
        else:
            await self._listen_protocol()
        self._ticker = self.loop.create_task(self._tick(), name=f"{self.name}-idle")
        if self._registry is not None:
            self._collector = _TCPCollector(self)
            self._registry.register(self._collector)

    def _bind_error(self, exc: OSError) -> PodkitError:
        reason = (
            "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        )
        return ListenError(self.host, self.port, reason)

    async def _listen_protocol(self) -> None:
        try:
            if self.sock is not None:
                self._server = await self.loop.create_server(
                    lambda: _ClientSide(self), sock=self.sock, backlog=1024
                )
            else:
                self._server = await self.loop.create_server(
                    lambda: _ClientSide(self),
                    self.host,
                    self.port,
                    reuse_port=self.reuse_port or None,
                    backlog=1024,
                )
        except OSError as exc:
            raise self._bind_error(exc) from exc
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _listen_raw(self) -> None:
        sock = self.sock
        if sock is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((self.host, self.port))
                sock.listen(1024)
            except OSError as exc:
                sock.close()
                raise self._bind_error(exc) from exc
        sock.setblocking(False)
        self._listener = sock
        self.port = int(sock.getsockname()[1])
        self.loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(64):  # bounded: other callbacks get their turn under a connection storm
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: the listener stays; the next readiness retries
            self.counters["connections_total"] += 1
            if len(self.spliced) >= self.max_connections or self.draining:
                self.counters["refused"] += 1
                client.close()
                continue
            client.setblocking(False)
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _SplicedPair(self, client)
            self.spliced.add(pair)
            pair.task = self.loop.create_task(pair.connect())

    def _stop_listening(self) -> None:
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if self._server is not None:
            self._server.close()

    async def _tick(self) -> None:
        interval = max(0.02, min(self.idle_timeout / 4, 1.0))
        while True:
            await asyncio.sleep(interval)
            cutoff = self.loop.time() - self.idle_timeout
            connections: list[_ClientSide | _SplicedPair] = [*self.clients, *self.spliced]
            for client in connections:
                if client.idle_since() < cutoff:
                    self.counters["idle_timeouts"] += 1
                    client.abort()

    def statistics(self) -> TCPStatistics:
        """A snapshot of the counters."""
        c = self.counters
        bytes_in, bytes_out = c["bytes_in"], c["bytes_out"]
        for pair in self.spliced:  # raw pairs count locally until they close
            for direction in pair.directions:
                if direction.counter == "bytes_in":
                    bytes_in += direction.count
                else:
                    bytes_out += direction.count
        return TCPStatistics(
            connections_open=len(self.clients) + len(self.spliced),
            connections_total=c["connections_total"],
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            connect_errors=c["connect_errors"],
            idle_timeouts=c["idle_timeouts"],
            refused=c["refused"],
        )

    def count_before(self, epoch: int) -> int:
        """Connections open now that were accepted in an epoch before ``epoch``."""
        connections: list[_ClientSide | _SplicedPair] = [*self.clients, *self.spliced]
        return sum(1 for c in connections if c.epoch < epoch)

    def close_before(self, epoch: int) -> int:
        """Close (reset) the connections accepted before ``epoch``; returns how many."""
        connections: list[_ClientSide | _SplicedPair] = [*self.clients, *self.spliced]
        closed = 0
        for client in connections:
            if client.epoch < epoch:
                client.abort()
                closed += 1
        return closed

    async def drain(self, timeout: float) -> None:
        """Stop accepting; let open connections finish for up to ``timeout``, then close them."""
        self.draining = True
        self._stop_listening()
        if self.clients or self.spliced:
            self.all_closed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.all_closed.wait()
        await self.aclose()

    async def aclose(self) -> None:
        """Close the listener and every connection now."""
        self.draining = True
        self._stop_listening()
        connections: list[_ClientSide | _SplicedPair] = [*self.clients, *self.spliced]
        for client in connections:
            client.abort()
        ticker, server, collector = self._ticker, self._server, self._collector
        self._ticker = self._server = self._collector = None
        await finish_closing(ticker, server, self._registry, collector)


class _TCPCollector(Collector):
    def __init__(self, proxy: TCPProxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterable[Metric]:
        return tcp_metrics([self.proxy.statistics()], prefix=self.proxy.metrics_prefix)


def tcp_metrics(
    snapshots: Iterable[TCPStatistics], *, prefix: str = "podkit_tcp"
) -> Iterator[Metric]:
    """Prometheus metric families for one or more forwarders' statistics, summed."""
    snaps = list(snapshots)
    gauge = GaugeMetricFamily(f"{prefix}_connections", "Client connections open now.")
    gauge.add_metric([], sum(s.connections_open for s in snaps))
    yield gauge
    for attr, name, help_text in (
        ("connections_total", "connections_accepted", "Client connections accepted."),
        ("bytes_in", "received_bytes", "Bytes received from clients."),
        ("bytes_out", "sent_bytes", "Bytes received from upstreams and sent to clients."),
        ("connect_errors", "connect_errors", "Upstream connections that failed."),
        ("idle_timeouts", "idle_timeouts", "Connections closed for being idle."),
        ("refused", "refused", "Connections refused at the connection limit."),
    ):
        counter = CounterMetricFamily(f"{prefix}_{name}", help_text)
        counter.add_metric([], sum(getattr(s, attr) for s in snaps))
        yield counter


__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_COPY_BYTES",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "PIPE_BYTES",
    "SPLICE_AVAILABLE",
    "TCPPick",
    "TCPProxy",
    "TCPStatistics",
    "tcp_metrics",
]
