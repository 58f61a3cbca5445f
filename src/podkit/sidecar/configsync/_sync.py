"""The config sync's shell: fetch, render, compare, validate, write atomically, notify."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jinja2
from prometheus_client import CollectorRegistry, Counter, Gauge

from podkit.errors import ConfigError
from podkit.runtime.logging import get_logger
from podkit.sidecar._files import commit_temp, write_temp
from podkit.sidecar._retry import Backoff
from podkit.sidecar.configsync._core import (
    Readiness,
    Stage,
    SyncFailure,
    SyncHealth,
    load_template,
    render,
    substitute,
)
from podkit.sidecar.configsync._notify import Notifier, run_command
from podkit.sidecar.configsync._sources import DEFAULT_LONG_POLL, Source

DEFAULT_EVERY: Final = 10.0
DEFAULT_VALIDATE_TIMEOUT: Final = 30.0  # an application's config test finishes in seconds
DEFAULT_RETRY_INITIAL: Final = 0.5  # the first retry after a failure
DEFAULT_RETRY_MAX: Final = 30.0  # a source that is back is read again within 30 s


@dataclass(frozen=True, slots=True)
class ConfigSyncConfig:
    """What ``podkit configsync`` is told on its command line.

    Attributes:
        dest: the file the application reads.
        every: seconds between polls (and the poll interval of ``watch`` against an HTTP
            server that does not hold requests).
        watch: wait for changes (etcd watch, HTTP long-poll) instead of polling.
        template: Jinja2 template text rendering the fetched JSON; None writes it as is.
        validate: command run on the candidate file (``{}`` is its path); exit 0 accepts.
        backoff: delays between attempts after failures (``--retry-max`` is its cap).
    """

    dest: str
    every: float = DEFAULT_EVERY
    watch: bool = False
    template: str | None = None
    template_name: str = "template"
    validate: tuple[str, ...] = ()
    validate_timeout: float = DEFAULT_VALIDATE_TIMEOUT
    mode: int | None = None
    backoff: Backoff = field(
        default_factory=lambda: Backoff(initial=DEFAULT_RETRY_INITIAL, maximum=DEFAULT_RETRY_MAX)
    )

    def __post_init__(self) -> None:
        if self.every <= 0:
            raise ConfigError("must be more than 0", path="--every")
        if self.backoff.maximum <= 0:
            raise ConfigError("must be more than 0", path="--retry-max")
        if not Path(self.dest).parent.is_dir():
            raise ConfigError(f"the directory of {self.dest} does not exist", path="--dest")


@dataclass(frozen=True, slots=True)
class ConfigSyncStatistics:
    ready: bool
    reason: str
    changes: int
    failures: int
    last_version: str | None
    sha256: str | None
    failures_in_a_row: int = 0
    retry_delay: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "reason": self.reason,
            "changes": self.changes,
            "failures": self.failures,
            "failures_in_a_row": self.failures_in_a_row,
            "retry_delay": self.retry_delay,
            "last_version": self.last_version,
            "sha256": self.sha256,
        }


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rounds = Counter(
            "configsync_rounds",
            "Rounds that ended well, by outcome (changed, unchanged, not_modified).",
            ["outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "configsync_failures",
            "Rounds that failed, by stage (fetch, parse, render, validate, write, notify).",
            ["stage"],
            registry=registry,
        )
        self.notifications = Counter(
            "configsync_notifications", "Times the application was told.", registry=registry
        )
        self.last_success = Gauge(
            "configsync_last_success_timestamp_seconds",
            "Unix time of the last round without failure.",
            registry=registry,
        )
        self.last_change = Gauge(
            "configsync_last_change_timestamp_seconds",
            "Unix time the destination file last changed.",
            registry=registry,
        )
        self.up = Gauge(
            "configsync_source_up", "1 when the last round succeeded.", registry=registry
        )
        self.failures_in_a_row = Gauge(
            "configsync_consecutive_failures",
            "Rounds that failed since the last good one.",
            registry=registry,
        )
        self.retry_delay = Gauge(
            "configsync_retry_delay_seconds",
            "Seconds the next attempt waits after the last failure (0 while rounds succeed).",
            registry=registry,
        )


class ConfigSync:
    """Keeps ``config.dest`` equal to the rendered source and tells the application.

    Args:
        config: destination, schedule, template and validation.
        source: see :func:`~._sources.open_source` (closed by the caller).
        notifier: how to tell the application, or None.
        registry: where metrics go (a private registry when None).
        on_readiness: called with each change of readiness (e.g. the runtime's).
    """

    def __init__(
        self,
        config: ConfigSyncConfig,
        source: Source,
        *,
        notifier: Notifier | None = None,
        registry: CollectorRegistry | None = None,
        on_readiness: Callable[[Readiness], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.source = source
        self.notifier = notifier
        self.clock = clock
        self.log = get_logger("podkit.configsync")
        self.metrics = _Metrics(registry if registry is not None else CollectorRegistry())
        self.health = SyncHealth(backoff=config.backoff)
        self.template: jinja2.Template | None = (
            None
            if config.template is None
            else load_template(config.template, name=config.template_name)
        )
        self._on_readiness = on_readiness
        self._readiness: Readiness | None = None
        self._random = random.Random()
        self._changes = 0
        self._failures = 0
        self._last_version: str | None = None
        self._retry_delay = 0.0
        self._first_round = True
        self.first_good = asyncio.Event()

    def statistics(self) -> ConfigSyncStatistics:
        readiness = self.health.readiness()
        current = self._read_dest()
        return ConfigSyncStatistics(
            ready=readiness.ready,
            reason=readiness.reason,
            changes=self._changes,
            failures=self._failures,
            last_version=self._last_version,
            sha256=None if current is None else hashlib.sha256(current).hexdigest(),
            failures_in_a_row=self.health.failures_in_a_row,
            retry_delay=self._retry_delay,
        )

    async def serve(self, stopping: asyncio.Event) -> None:
        """Sync until ``stopping`` is set (a round in progress is abandoned: the file is
        always either the old or the new one)."""
        self._report()
        loop = asyncio.create_task(self._loop(), name="configsync-loop")
        stop = asyncio.create_task(stopping.wait(), name="configsync-stop")
        try:
            await asyncio.wait({loop, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (loop, stop):
                task.cancel()
            results = await asyncio.gather(loop, stop, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result

    async def _loop(self) -> None:
        while True:
            # Wait for a change only once the source answered well: a first read, and the
            # read after a failure, must not be held.
            healthy = self.health.last_failure is None and not self._first_round
            wait = DEFAULT_LONG_POLL if self.config.watch and healthy else None
            try:
                await self.sync_once(wait=wait)
            except SyncFailure as failure:
                self._failed(failure)
                delay = self.health.failure(failure, self.clock(), rand=self._random.random())
                self._retry_delay = delay
                self.metrics.retry_delay.set(delay)
                self.metrics.failures_in_a_row.set(self.health.failures_in_a_row)
                self._report()
                await asyncio.sleep(delay)
                continue
            self._first_round = False
            if not self.config.watch:
                await asyncio.sleep(self.config.every)

    async def sync_once(self, *, wait: float | None = None) -> bool:
        """One round: fetch, and when the rendering differs from the file, validate, write
        and notify.

        Returns:
            Whether the destination changed.

        Raises:
            SyncFailure: a stage failed; the destination was not touched (unless only the
                notification failed, which is then retried by the next round).
        """
        snapshot = await self.source.fetch(wait=wait)
        if snapshot is None:
            await self._pay_notify_debt()
            self._succeeded("not_modified")
            return False
        content = render(snapshot.body, self.template, source=self.source.description)
        current = self._read_dest()
        if current == content:
            self.source.accept()
            self.health.good_file()
            self._last_version = snapshot.version
            await self._pay_notify_debt()
            self._succeeded("unchanged")
            return False
        await self._write(content)
        # Only now may the source answer "not modified" for this version: a version that
        # failed to parse, render, validate or be written is fetched and judged again.
        self.source.accept()
        self._last_version = snapshot.version
        self.health.good_file()
        self._changes += 1
        self.metrics.last_change.set(time.time())
        self.log.info(
            "config changed",
            extra={
                "dest": self.config.dest,
                "version": snapshot.version,
                "sha256": hashlib.sha256(content).hexdigest()[:16],
            },
        )
        self.health.notify_owed = self.notifier is not None
        await self._pay_notify_debt()
        self._succeeded("changed")
        return True

    def _read_dest(self) -> bytes | None:
        try:
            return Path(self.config.dest).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SyncFailure(Stage.WRITE, f"cannot read {self.config.dest}: {exc}") from exc

    async def _write(self, content: bytes) -> None:
        try:
            candidate = write_temp(
                self.config.dest, content, mode=self.config.mode, tag="candidate"
            )
        except OSError as exc:
            raise SyncFailure(Stage.WRITE, f"{self.config.dest}: {exc.strerror or exc}") from exc
        try:
            if self.config.validate:
                argv = substitute(list(self.config.validate), str(candidate))
                code, output = await run_command(argv, timeout=self.config.validate_timeout)
                if code != 0:
                    raise SyncFailure(
                        Stage.VALIDATE,
                        f"{shlex.join(self.config.validate)} exited {code}: {output}",
                    )
            try:
                commit_temp(candidate, self.config.dest)
            except OSError as exc:
                raise SyncFailure(
                    Stage.WRITE, f"{self.config.dest}: {exc.strerror or exc}"
                ) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()

    async def _pay_notify_debt(self) -> None:
        if not self.health.notify_owed or self.notifier is None:
            return
        current = self._read_dest() or b""
        await self.notifier.notify(self.config.dest, current)
        self.health.notify_owed = False
        self.metrics.notifications.inc()
        self.log.info("application notified", extra={"how": self.notifier.description})

    def _succeeded(self, outcome: str) -> None:
        was_failing = self.health.last_failure is not None
        self.health.success(self.clock())
        self._retry_delay = 0.0
        self.metrics.retry_delay.set(0)
        self.metrics.failures_in_a_row.set(0)
        if was_failing:
            self.log.info("source is back", extra={"source": self.source.description})
        self.metrics.rounds.labels(outcome).inc()
        self.metrics.up.set(1)
        self.metrics.last_success.set(time.time())
        if self.health.has_good_file:
            self.first_good.set()
        self._report()

    def _failed(self, failure: SyncFailure) -> None:
        self._failures += 1
        self.metrics.failures.labels(failure.stage.value).inc()
        self.metrics.up.set(0)
        self.log.warning(
            "sync failed; the last good file stays",
            extra={"stage": failure.stage.value, "error": failure.message},
        )

    def _report(self) -> None:
        readiness = self.health.readiness()
        if readiness != self._readiness:
            self._readiness = readiness
            if self._on_readiness is not None:
                self._on_readiness(readiness)
