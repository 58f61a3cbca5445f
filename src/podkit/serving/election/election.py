"""Leader election and locks: the asyncio shell around :class:`LeaseElector`.

``Election.leadership()`` campaigns until this process holds the lease, then keeps it
renewed in a task the context owns, and sets ``term.lost`` the moment the elector says
leadership can no longer be guaranteed (see :mod:`podkit.serving.election.lease`). Every
backend request is cut at the deadline the elector gives, so a hung backend cannot keep a
holder believing it leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from podkit.backends.leases import Grant, Holder, LeaseBackend, check_name, open_lease_backend
from podkit.errors import BackendError, BackendUnavailable, ConfigError, LeaseLost, UsageError
from podkit.serving.election.lease import (
    DEFAULT_TTL,
    Action,
    LeaseElector,
    LeaseTiming,
    Role,
)

RELEASE_TIMEOUT = 2.0  # a release that takes longer is abandoned: the lease expires by itself

EventHook = Callable[[str, dict[str, Any]], None]


def default_identity() -> str:
    """``HOST-PID-RANDOM``: unique per process, readable in ``podkit elect status``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(eq=False)
class Term:
    """One term of leadership.

    Attributes:
        name: the election.
        identity: our identity.
        fencing_token: larger than the token of every earlier term of this election; pass it
            to every resource you change so it can refuse writes from an older term.
        lost: set the moment leadership can no longer be guaranteed (or was given up).
        lost_reason: why ``lost`` was set.
        valid_until: the monotonic time (``time.monotonic()`` unless the election was given
            another clock) until which leadership is guaranteed; moves out with each renewal.
    """

    name: str
    identity: str
    fencing_token: int
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_reason: str | None = None
    valid_until: float = -math.inf
    clock: Callable[[], float] = time.monotonic

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    def leads(self) -> bool:
        """True while leadership is guaranteed. Unlike ``lost``, which a timer sets, this
        reads the clock, so it is right even after the event loop was blocked."""
        if not self.lost.is_set() and self.clock() >= self.valid_until:
            self._lose("the lease deadline passed")
        return not self.lost.is_set()

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless leadership is guaranteed; call it before acting."""
        if not self.leads():
            raise LeaseLost(f"leadership of {self.name!r} lost: {self.lost_reason}")

    async def wait_lost(self) -> None:
        """Return when leadership is lost."""
        await self.lost.wait()


@dataclass(frozen=True, slots=True)
class ElectionStatistics:
    """A snapshot of an election's counters."""

    name: str
    identity: str
    role: str
    fencing_token: int | None
    terms: int
    renewals: int
    renew_failures: int
    attempts: int
    backend_errors: int
    last_seen_leader: Holder | None


class Election:
    """Leader election among processes sharing a lease ``name`` on one backend.

    Args:
        backend: a :class:`LeaseBackend`, or a URL (``sqlite:///path.db``,
            ``redis://host:port/db``, ``etcd://host:port``) that this election then owns and
            closes in :meth:`aclose`.
        name: the election's name.
        identity: how this process appears to others (default ``HOST-PID-RANDOM``).
        ttl: seconds a lease lasts without renewal; failover takes about this long.
        timing: full timing control (overrides ``ttl``).
        on_event: called with ``(event, fields)`` for ``leading``, ``renewed``, ``lost``,
            ``backend_error`` (for logs and metrics). Times in the fields are durations in
            seconds (``lease_left``, ``retry_in``), never readings of the monotonic clock.
        clock: a monotonic clock in seconds.
        backend_timeout: seconds the backend may stay unreachable (every request failing,
            retried with backoff) before :meth:`leadership` raises
            :class:`~podkit.errors.BackendUnavailable`; None retries forever.

    Raises:
        ConfigError: a bad name, ttl, URL or backend timeout.
    """

    def __init__(
        self,
        backend: LeaseBackend | str,
        name: str,
        *,
        identity: str | None = None,
        ttl: float = DEFAULT_TTL,
        timing: LeaseTiming | None = None,
        on_event: EventHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        backend_timeout: float | None = None,
    ) -> None:
        if backend_timeout is not None and not backend_timeout > 0:
            raise ConfigError("must be more than 0", path="backend_timeout")
        self.name = check_name(name)
        self.identity = identity or default_identity()
        self.timing = timing or LeaseTiming.for_ttl(ttl)
        self._owns_backend = isinstance(backend, str)
        self.backend = open_lease_backend(backend) if isinstance(backend, str) else backend
        self._backend_name = backend if isinstance(backend, str) else type(backend).__name__
        self.backend_timeout = backend_timeout
        self._unreachable_since: float | None = None  # first failure of the current outage
        self._random = random.Random()
        self._on_event = on_event
        self._clock = clock
        self._busy = False
        self._elector: LeaseElector | None = None
        self._grant: Grant | None = None
        self._released = False
        self._term: Term | None = None
        self._wake = asyncio.Event()
        self._terms = 0
        self._renewals = 0
        self._renew_failures = 0
        self._attempts = 0
        self._backend_errors = 0
        self._last_seen: Holder | None = None

    # -- public API ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def leadership(self) -> AsyncIterator[Term]:
        """Campaign until this process leads, then hold leadership for the ``async with`` body.

        On exit leadership is given up (``lost`` is set first, then the lease is released).
        The body is not interrupted when leadership is lost: watch ``term.lost`` (or call
        ``term.check()`` before each action).

        Raises:
            UsageError: this election is already campaigning or leading.
            ConfigError: the backend rejected the name.
        """
        if self._busy:
            raise UsageError(f"election {self.name!r} is already campaigning or leading")
        self._busy = True
        try:
            elector, grant = await self._campaign()
            term = Term(
                self.name,
                self.identity,
                grant.token,
                valid_until=elector.valid_until,
                clock=self._clock,
            )
            self._elector, self._grant, self._term, self._released = elector, grant, term, False
            self._terms += 1
            self._emit(
                "leading",
                token=grant.token,
                lease_left=max(0.0, elector.valid_until - self._clock()),
            )
            keeper = asyncio.get_running_loop().create_task(
                self._keep(elector, grant, term), name=f"election-{self.name}-renew"
            )
            try:
                yield term
            finally:
                keeper.cancel()
                try:
                    with contextlib.suppress(asyncio.CancelledError):
                        await keeper  # re-raises a failure of the renewal task itself
                finally:
                    if elector.role is Role.LEADER:
                        elector.step_down("released")
                        term._lose("released")
                        self._emit("released", token=grant.token)
                    await self._release(grant)
        finally:
            self._busy = False
            self._elector = self._grant = self._term = None

    async def leader(self) -> Holder | None:
        """The current leader's identity, token and time left, without campaigning.

        Raises:
            BackendUnavailable: the backend could not be reached.
            BackendError: the backend failed.
        """
        return await self.backend.leader(self.name)

    async def resign(self) -> None:
        """Give leadership up at once so another process can take it; a no-op when this
        process does not lead. ``term.lost`` is set before the lease is released.

        Raises:
            BackendError: the release failed (the lease then expires after its ttl).
        """
        elector, term, grant = self._elector, self._term, self._grant
        if elector is None or term is None or grant is None or elector.role is not Role.LEADER:
            return
        elector.step_down("resigned")
        term._lose("resigned")
        self._emit("resigned", token=grant.token)
        self._wake.set()
        self._released = True
        await self.backend.release(grant)

    def statistics(self) -> ElectionStatistics:
        """A snapshot of this election's role and counters."""
        elector = self._elector
        leading = elector is not None and elector.role is Role.LEADER
        return ElectionStatistics(
            name=self.name,
            identity=self.identity,
            role=(elector.role.value if elector else ("candidate" if self._busy else "follower")),
            fencing_token=elector.token if leading and elector else None,
            terms=self._terms,
            renewals=self._renewals,
            renew_failures=self._renew_failures,
            attempts=self._attempts,
            backend_errors=self._backend_errors,
            last_seen_leader=self._last_seen,
        )

    async def aclose(self) -> None:
        """Close the backend if this election opened it from a URL."""
        if self._owns_backend:
            await self.backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internals -----------------------------------------------------------------------

    def _reached(self) -> None:
        """The backend answered: an outage, if any, is over."""
        self._unreachable_since = None

    def _give_up_at(self) -> float:
        """When the current outage reaches ``backend_timeout`` (infinity without one)."""
        if self.backend_timeout is None or self._unreachable_since is None:
            return math.inf
        return self._unreachable_since + self.backend_timeout

    def _unreachable(self, now: float, exc: BaseException) -> None:
        """A request got no answer; give up once the outage outlasts ``backend_timeout``.

        Raises:
            BackendUnavailable: the backend has been unreachable for ``backend_timeout``.
        """
        if self._unreachable_since is None:
            self._unreachable_since = now
        down_for = now - self._unreachable_since
        if self.backend_timeout is not None and down_for >= self.backend_timeout:
            error = _describe(exc)
            if self._backend_name not in error:
                error = f"{self._backend_name}: {error}"
            raise BackendUnavailable(
                f"could not reach the backend for {_seconds(down_for):g}s "
                f"(backend timeout {_seconds(self.backend_timeout):g}s): {error}"
            ) from exc

    def _emit(self, event: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event(event, {"election": self.name, "identity": self.identity, **fields})

    async def _campaign(self) -> tuple[LeaseElector, Grant]:
        elector = LeaseElector(self.timing)
        self._elector = elector
        elector.campaign(self._clock())
        claim = 0
        try:
            while True:
                now = self._clock()
                decision = elector.next(now)
                if decision.action is Action.WAIT:
                    await self.backend.wait_for_change(self.name, timeout=decision.at - now)
                    elector.wake(now=self._clock())
                    continue
                self._attempts += 1
                started = self._clock()
                try:
                    async with asyncio.timeout(decision.timeout):
                        result = await self.backend.acquire(
                            self.name, identity=self.identity, ttl=self.timing.ttl, claim=claim
                        )
                except (BackendError, TimeoutError) as exc:
                    self._backend_errors += 1
                    now = self._clock()
                    self._unreachable(now, exc)
                    delay = elector.unreachable(
                        now=now, rand=self._random.random(), not_after=self._give_up_at()
                    )
                    self._emit(
                        "backend_error",
                        during="acquire",
                        error=_describe(exc),
                        retry_in=delay,
                    )
                    continue
                self._reached()
                claim = result.claim
                if result.grant is None:
                    self._last_seen = result.holder
                    elector.rejected(now=self._clock())
                    continue
                if elector.acquired(
                    token=result.grant.token,
                    started=started,
                    now=self._clock(),
                    ttl=result.grant.ttl,
                ):
                    return elector, result.grant
                # Granted, but the answer came too late to leave any safe time: give it back.
                await self._release(result.grant)
                claim = 0
        except BaseException:
            if elector.role is Role.CANDIDATE:
                elector.withdraw()
            if claim:
                with contextlib.suppress(BackendError, TimeoutError):
                    async with asyncio.timeout(RELEASE_TIMEOUT):
                        await self.backend.withdraw(self.name, claim)
            raise

    async def _keep(self, elector: LeaseElector, grant: Grant, term: Term) -> None:
        """Renew until leadership ends; set ``term.lost`` at the elector's deadline."""
        try:
            await self._renew_until_lost(elector, grant, term)
        except Exception as exc:
            # A failure here is a bug, not a backend error: stop leading, then report it.
            if elector.role is Role.LEADER:
                elector.step_down(f"renewal failed: {exc!r}")
            term._lose(f"renewal failed: {exc!r}")
            raise

    async def _renew_until_lost(self, elector: LeaseElector, grant: Grant, term: Term) -> None:
        while elector.role is Role.LEADER:
            now = self._clock()
            decision = elector.next(now)
            if decision.action is Action.STEP_DOWN:
                reason = elector.lost_reason or "the lease could not be renewed in time"
                elector.step_down(reason)
                term._lose(reason)
                self._emit("lost", token=grant.token, reason=reason)
                return
            if decision.action is Action.WAIT:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    delay = decision.at - now
                    if not math.isfinite(delay):  # pragma: no cover - a leader always has one
                        delay = self.timing.retry_interval
                    await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, delay))
                continue
            started = self._clock()
            try:
                async with asyncio.timeout(decision.timeout):
                    renewed = await self.backend.renew(grant, ttl=elector.term_timing.ttl)
            except (BackendError, TimeoutError) as exc:
                self._renew_failures += 1
                self._backend_errors += 1
                if self._unreachable_since is None:
                    self._unreachable_since = self._clock()
                self._emit("backend_error", during="renew", error=_describe(exc))
                elector.renew_failed(now=self._clock(), definite=False)
                continue
            self._reached()
            if renewed:
                if elector.renewed(started=started, now=self._clock()):
                    term.valid_until = elector.valid_until
                    self._renewals += 1
                    self._emit(
                        "renewed",
                        token=grant.token,
                        lease_left=max(0.0, elector.valid_until - self._clock()),
                    )
            else:
                self._renew_failures += 1
                elector.renew_failed(now=self._clock(), definite=True)

    async def _release(self, grant: Grant) -> None:
        if self._released and self._grant is grant:
            return
        self._released = True
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                await self.backend.release(grant)
        except (BackendError, TimeoutError) as exc:
            # Not fatal: the lease expires after its ttl; others just wait a little longer.
            self._backend_errors += 1
            self._emit("backend_error", during="release", error=_describe(exc))


def _seconds(duration: float) -> float:
    """A duration for logs and messages: seconds to the millisecond."""
    return round(max(0.0, duration), 3)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not isinstance(exc, BackendError):
        return "timed out"
    return str(exc) or type(exc).__name__


class Lock:
    """A distributed lock with fencing tokens: an election whose term is the critical section.

    ``async with Lock(backend, "name", ttl=2.0) as term:`` blocks until the lock is held;
    ``term.fencing_token`` increases with every acquisition and ``term.lost`` is set if the
    lock can no longer be guaranteed. A lock is not re-entrant.

    Args:
        backend: a :class:`LeaseBackend` or a backend URL (then closed in :meth:`aclose`).
        name: the lock's name (it shares the namespace of election names).
        ttl: seconds the lock lasts if its holder stops renewing.
        identity: how the holder appears in ``leader()`` (default ``HOST-PID-RANDOM``).
    """

    def __init__(
        self,
        backend: LeaseBackend | str,
        name: str,
        ttl: float = DEFAULT_TTL,
        *,
        identity: str | None = None,
    ) -> None:
        self._election = Election(backend, name, identity=identity, ttl=ttl)
        self._context: contextlib.AbstractAsyncContextManager[Term] | None = None
        self.term: Term | None = None

    @property
    def fencing_token(self) -> int:
        """The token of the current hold.

        Raises:
            LeaseLost: the lock is not held.
        """
        if self.term is None:
            raise LeaseLost(f"lock {self._election.name!r} is not held")
        return self.term.fencing_token

    @property
    def lost(self) -> asyncio.Event:
        """Set when the current hold can no longer be guaranteed."""
        if self.term is None:
            raise LeaseLost(f"lock {self._election.name!r} is not held")
        return self.term.lost

    async def holder(self) -> Holder | None:
        """Who holds the lock now (any process)."""
        return await self._election.leader()

    async def __aenter__(self) -> Term:
        context = self._election.leadership()
        self.term = await context.__aenter__()
        self._context = context
        return self.term

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        context, self._context = self._context, None
        self.term = None
        if context is not None:
            await context.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Close the backend if the lock opened it from a URL."""
        await self._election.aclose()
