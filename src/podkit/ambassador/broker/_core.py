"""The environment broker's decisions: which upstreams serve the current environment, which
of them are healthy, and when connections of an old environment must go (sans-IO).

Theory of operation. The map names each environment's upstreams (``dev=127.0.0.1:6379``,
``prod=10.0.0.5:6379,10.0.0.6:6379``). The broker's *current* environment comes from a
source (a variable, a file, an etcd key) and may change at any time, as may the map. Every
change of the current environment's upstreams starts a new **epoch**: new connections go to
the new upstreams at once, while connections accepted in an earlier epoch keep their
upstream (one connection never mixes two environments) until they end or the drain timeout
passes, when the shell closes them.

Within an environment, connections are spread round-robin over the upstreams whose TCP
health check passes (``rise`` passes in a row bring one up, ``fall`` failures take it
down; an upstream not yet checked is used). When none passes, all of them are tried: a
refused connection says more to a client than a broker that refuses on a guess.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podkit.engines.http import Upstream
from podkit.errors import ConfigError

DEFAULT_RISE = 2  # passing checks in a row that bring an upstream up
DEFAULT_FALL = 2  # failing checks in a row that take it down
MAX_ENVIRONMENTS = 256  # a map larger than this is a mistake
MAX_UPSTREAMS_PER_ENV = 64
MAX_ENV_NAME = 128  # an environment name read from a source is one short word


class Health(enum.Enum):
    """An upstream's TCP health."""

    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


def parse_upstreams(text: str, *, field: str, http: bool = False) -> tuple[Upstream, ...]:
    """``10.0.0.5:6379,10.0.0.6:6379`` (or ``http://...`` URLs in HTTP mode) as upstreams.

    Raises:
        ConfigError: an empty list or a bad address.
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError("expected HOST:PORT[,HOST:PORT...]", path=field)
    if len(parts) > MAX_UPSTREAMS_PER_ENV:
        raise ConfigError(f"at most {MAX_UPSTREAMS_PER_ENV} upstreams", path=field)
    found: list[Upstream] = []
    for part in parts:
        if not http and ("://" in part or not part.rpartition(":")[2].isdigit()):
            raise ConfigError(f"tcp mode takes HOST:PORT, got {part!r}", path=field)
        try:
            found.append(Upstream.parse(part))
        except ConfigError as exc:
            raise ConfigError(exc.reason, path=field) from exc
    return tuple(found)


def parse_map_entry(
    text: str, *, field: str = "--map", http: bool = False
) -> tuple[str, tuple[Upstream, ...]]:
    """``'prod=10.0.0.5:6379,10.0.0.6:6379'`` as the environment's name and upstreams.

    Raises:
        ConfigError: no ``=``, an empty name or a bad upstream.
    """
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(
            f"expected ENV=HOST:PORT[,HOST:PORT...] such as dev=127.0.0.1:6379, got {text!r}",
            path=field,
        )
    return name, parse_upstreams(rest, field=f"{field} {name}", http=http)


@dataclass(frozen=True, slots=True)
class EnvChange:
    """A new epoch: the environment (or its upstreams) changed."""

    epoch: int
    previous: str | None
    current: str | None
    reason: str


class BrokerTable:
    """The map, the current environment, upstream health and the epoch.

    Args:
        envs: each environment's upstreams.
        rise, fall: the health-check thresholds.

    Raises:
        ConfigError: too many environments.
    """

    def __init__(
        self,
        envs: Mapping[str, Sequence[Upstream]],
        *,
        rise: int = DEFAULT_RISE,
        fall: int = DEFAULT_FALL,
    ) -> None:
        self.rise = rise
        self.fall = fall
        self.envs: dict[str, tuple[Upstream, ...]] = {}
        self.environment: str | None = None
        self.epoch = 0
        self.health: dict[Upstream, Health] = {}
        self._streak: dict[Upstream, int] = {}  # >0 passes in a row, <0 failures in a row
        self._next = 0
        self.unknown_environment: str | None = None
        self.set_map(envs)

    def current(self) -> tuple[Upstream, ...]:
        """The current environment's upstreams (none when it is unset or unknown)."""
        if self.environment is None:
            return ()
        return self.envs.get(self.environment, ())

    def set_map(self, envs: Mapping[str, Sequence[Upstream]]) -> EnvChange | None:
        """Replace the map; a new epoch when the current environment's upstreams changed.

        Raises:
            ConfigError: too many environments or upstreams (nothing changes then).
        """
        if len(envs) > MAX_ENVIRONMENTS:
            raise ConfigError(f"at most {MAX_ENVIRONMENTS} environments", path="map")
        before = self.current()
        self.envs = {name: tuple(ups) for name, ups in envs.items()}
        live = {u for ups in self.envs.values() for u in ups}
        for upstream in list(self.health):
            if upstream not in live:
                del self.health[upstream]
                self._streak.pop(upstream, None)
        if self.environment is not None and self.environment not in self.envs:
            self.unknown_environment = self.environment
        if self.current() != before:
            return self._new_epoch(self.environment, "the map changed")
        return None

    def set_environment(self, name: str | None) -> EnvChange | None:
        """The source says the environment is ``name`` (None: unset).

        Returns:
            The new epoch when the name changed, else None.
        """
        if name is not None:
            name = name.strip()[:MAX_ENV_NAME] or None
        if name == self.environment:
            return None
        previous = self.environment
        self.environment = name
        self.unknown_environment = name if name is not None and name not in self.envs else None
        # A new epoch even when both names map to the same upstreams: their credentials
        # may differ, and a connection belongs to the environment it was made for.
        return self._new_epoch(previous, f"environment {previous} -> {name}")

    def _new_epoch(self, previous: str | None, reason: str) -> EnvChange:
        self.epoch += 1
        self._next = 0
        return EnvChange(self.epoch, previous, self.environment, reason)

    def pick(self) -> Upstream | None:
        """The upstream for a new connection (round-robin over the healthy ones)."""
        ups = self.current()
        if not ups:
            return None
        usable = [u for u in ups if self.health.get(u, Health.UNKNOWN) is not Health.DOWN]
        if not usable:
            usable = list(ups)
        self._next = (self._next + 1) % len(usable)
        return usable[self._next]

    def probe_targets(self) -> tuple[Upstream, ...]:
        """What to health-check: the current environment's upstreams."""
        return self.current()

    def probe_result(self, upstream: Upstream, ok: bool) -> tuple[Health, Health] | None:
        """Record one check; returns ``(before, after)`` when the health changed."""
        streak = self._streak.get(upstream, 0)
        streak = max(streak, 0) + 1 if ok else min(streak, 0) - 1
        self._streak[upstream] = streak
        before = self.health.get(upstream, Health.UNKNOWN)
        after = before
        if ok and streak >= self.rise:
            after = Health.UP
        elif not ok and -streak >= self.fall:
            after = Health.DOWN
        if after is before:
            return None
        self.health[upstream] = after
        return before, after

    def statistics(self) -> dict[str, Any]:
        """The table as plain JSON values."""
        return {
            "environment": self.environment,
            "unknown_environment": self.unknown_environment,
            "epoch": self.epoch,
            "upstreams": [
                {"address": u.authority, "health": self.health.get(u, Health.UNKNOWN).value}
                for u in self.current()
            ],
            "map": {name: [u.authority for u in ups] for name, ups in sorted(self.envs.items())},
        }
