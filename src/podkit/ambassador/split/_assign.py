"""Which arm answers a request: match rules first, then the weighted (sticky) split.

Theory of operation. Every arm but the primary holds a weight, a fraction of traffic; the
primary holds what is left. A request's *point* is a number in ``[0, 1)``: for sticky traffic
the stable key hash of :mod:`podkit.hashing` (XXH3-64 of the user's key, the same in every
process and across restarts) divided by ``2**64``; for other traffic a fresh random number.
The candidates own consecutive ranges from 0 in the order they were configured, the primary
the rest: with ``weights = {candidate: 0.1}`` a user whose point is below 0.1 is on the
candidate.

This is the monotone property a canary needs: raising a candidate's weight widens its range,
so the users it gains all come from the primary (those whose point lies in the added strip)
and none of its users ever leaves; lowering it moves users only back to the primary. A user
flips arms only when the weights change, never between two requests under the same weights.
With several candidates, changing one candidate's weight shifts the ranges of the candidates
configured after it; give the one you ramp the first place.

Match rules (``header:X-Canary=1 -> candidate``) are tried in order before the split; the
first that matches names the arm, whatever the weights.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from podkit.errors import ConfigError
from podkit.hashing import key_hash

PRIMARY = "primary"
STICKY_SEED = 0x5B11  # a fixed seed: the split's points are independent of other key hashes
MAX_ARMS = 16  # a splitter with more arms than this is a configuration mistake
MAX_ROUTES = 64  # match rules are tried in order on every request

MatchSource = Literal["header", "cookie", "path", "method", "query"]
StickySource = Literal["header", "cookie", "client-ip"]


def parse_percent(text: str | float, *, field: str) -> float:
    """``10%``, ``0.1`` or ``10.5 %`` as a fraction in ``[0, 1]``.

    A bare number is read as a fraction when it is at most 1 and as a percentage otherwise
    (YAML's ``weight: 10`` means 10 %).

    Raises:
        ConfigError: not a number or percentage, or outside 0..100 %.
    """
    if isinstance(text, bool):
        raise ConfigError(f"expected a percentage such as 10%, got {text!r}", path=field)
    if isinstance(text, int | float):
        value = float(text)
        value = value / 100 if value > 1 else value
    else:
        raw = text.strip()
        try:
            value = float(raw[:-1].strip()) / 100 if raw.endswith("%") else float(raw)
        except ValueError:
            raise ConfigError(
                f"expected a percentage such as 10%, got {text!r}", path=field
            ) from None
        if not raw.endswith("%") and value > 1:
            value /= 100
    if not 0.0 <= value <= 1.0 or value != value:
        raise ConfigError(f"must be between 0% and 100%, got {text!r}", path=field)
    return value


def format_percent(fraction: float) -> str:
    """0.105 as ``10.5%``."""
    return f"{fraction * 100:.4g}%"


@dataclass(frozen=True, slots=True)
class StickyKey:
    """What keeps a user on one arm: ``header:NAME``, ``cookie:NAME`` or ``client-ip``."""

    source: StickySource
    name: str = ""

    @classmethod
    def parse(cls, text: str, *, field: str = "--sticky") -> StickyKey:
        """Parse the ``--sticky`` syntax.

        Raises:
            ConfigError: none of the three forms.
        """
        value = text.strip()
        if value == "client-ip":
            return cls("client-ip")
        kind, sep, name = value.partition(":")
        if sep and name.strip() and kind in ("header", "cookie"):
            return cls("header" if kind == "header" else "cookie", name.strip())
        raise ConfigError(
            f"expected header:NAME, cookie:NAME or client-ip, got {text!r}", path=field
        )

    def __str__(self) -> str:
        return self.source if self.source == "client-ip" else f"{self.source}:{self.name}"

    def extract(self, client: str, headers: Sequence[tuple[str, str]]) -> str | None:
        """The user's key in a request, or None when the request does not carry it (such a
        request is split per request)."""
        if self.source == "client-ip":
            return client or None
        if self.source == "header":
            value = header_value(headers, self.name)
            return value.strip() or None if value is not None else None
        return cookie_value(headers, self.name) or None


def header_value(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """The first value of header ``name`` (case-insensitive)."""
    lname = name.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value
    return None


def cookie_value(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """The value of cookie ``name`` in the request's ``Cookie`` fields."""
    for key, value in headers:
        if key.lower() != "cookie":
            continue
        for pair in value.split(";"):
            cname, sep, cvalue = pair.strip().partition("=")
            if sep and cname == name:
                return cvalue.strip().strip('"')
    return None


def query_value(query: str, name: str) -> str | None:
    """The first value of parameter ``name`` in a query string (not percent-decoded)."""
    for pair in query.split("&"):
        key, sep, value = pair.partition("=")
        if key == name:
            return value if sep else ""
    return None


@dataclass(frozen=True, slots=True)
class RouteRule:
    """A match rule: requests it matches go to ``arm``.

    ``header:NAME=VALUE``, ``cookie:NAME=VALUE``, ``query:NAME=VALUE`` (``=VALUE`` may be
    left out: the field's presence matches), ``path:/PREFIX`` and ``method:GET``.
    """

    source: MatchSource
    name: str
    value: str | None
    arm: str

    @classmethod
    def parse(cls, text: str, *, field: str = "--route") -> RouteRule:
        """Parse ``'MATCH -> ARM'``.

        Raises:
            ConfigError: the rule has no ``->``, an unknown match kind or an empty part.
        """
        match, sep, arm = text.partition("->")
        if not sep or not arm.strip():
            raise ConfigError(
                f"expected 'MATCH -> ARM' such as 'header:X-Canary=1 -> candidate', got {text!r}",
                path=field,
            )
        return cls.parse_match(match, arm.strip(), field=field)

    @classmethod
    def parse_match(cls, match: str, arm: str, *, field: str) -> RouteRule:
        """A rule from its match text and arm name.

        Raises:
            ConfigError: an unknown match kind or an empty part.
        """
        kind, sep, rest = match.strip().partition(":")
        rest = rest.strip()
        if not sep or not rest:
            raise ConfigError(
                f"expected header:NAME=VALUE, cookie:NAME=VALUE, query:NAME=VALUE, "
                f"path:/PREFIX or method:NAME, got {match.strip()!r}",
                path=field,
            )
        if kind == "path":
            if not rest.startswith("/"):
                raise ConfigError(f"a path match starts with /, got {rest!r}", path=field)
            return cls("path", "", rest, arm)
        if kind == "method":
            return cls("method", "", rest.upper(), arm)
        if kind in ("header", "cookie", "query"):
            name, eq, value = rest.partition("=")
            if not name.strip():
                raise ConfigError(f"a {kind} match needs a name, got {match.strip()!r}", path=field)
            source: MatchSource = "header" if kind == "header" else kind  # type: ignore[assignment]
            return cls(source, name.strip(), value.strip() if eq else None, arm)
        raise ConfigError(
            f"unknown match kind {kind!r}: expected header, cookie, query, path or method",
            path=field,
        )

    def __str__(self) -> str:
        if self.source in ("path", "method"):
            match = f"{self.source}:{self.value}"
        elif self.value is None:
            match = f"{self.source}:{self.name}"
        else:
            match = f"{self.source}:{self.name}={self.value}"
        return f"{match} -> {self.arm}"

    def matches(
        self, method: str, path: str, query: str, headers: Sequence[tuple[str, str]]
    ) -> bool:
        """Whether a request with these parts matches."""
        if self.source == "path":
            assert self.value is not None
            return path.startswith(self.value)
        if self.source == "method":
            return method == self.value
        if self.source == "header":
            found = header_value(headers, self.name)
            found = found.strip() if found is not None else None
        elif self.source == "cookie":
            found = cookie_value(headers, self.name)
        else:
            found = query_value(query, self.name)
        if found is None:
            return False
        return self.value is None or found == self.value


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where a request goes and why: ``reason`` is ``route``, ``sticky`` or ``random``."""

    arm: str
    reason: str


class SplitTable:
    """The weights of the arms and the decision for one request (sans-IO).

    Args:
        arms: the arm names; the first is the primary, which takes what the others leave.
        weights: fraction of traffic per non-primary arm (missing: 0).
        routes: match rules, tried in order before the split.
        sticky: what keeps a user on one arm (None: every request is split on its own).
        rng: the random source of unsticky requests (injectable for tests).

    Raises:
        ConfigError: an unknown arm in the weights or routes, or weights above 100 % in all.
    """

    def __init__(
        self,
        arms: Sequence[str],
        weights: Mapping[str, float] | None = None,
        *,
        routes: Sequence[RouteRule] = (),
        sticky: StickyKey | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not arms:
            raise ConfigError("a split needs at least its primary arm", path="arms")
        if len(set(arms)) != len(arms):
            raise ConfigError("an arm is named twice", path="arms")
        if len(arms) > MAX_ARMS:
            raise ConfigError(f"at most {MAX_ARMS} arms, got {len(arms)}", path="arms")
        if len(routes) > MAX_ROUTES:
            raise ConfigError(f"at most {MAX_ROUTES} routes, got {len(routes)}", path="routes")
        self.arms = tuple(arms)
        self.primary = self.arms[0]
        for rule in routes:
            if rule.arm not in self.arms:
                raise ConfigError(
                    f"route {str(rule)!r} names arm {rule.arm!r}; the arms are "
                    + ", ".join(self.arms),
                    path="routes",
                )
        self.routes = tuple(routes)
        self.sticky = sticky
        self.rng = rng if rng is not None else random.Random()
        self._bounds: tuple[tuple[float, str], ...] = ()
        self.weights: dict[str, float] = {}
        self.set_weights(weights or {})

    def set_weights(self, weights: Mapping[str, float]) -> dict[str, float]:
        """Replace the weights of the named arms (others keep theirs).

        Returns:
            Every non-primary arm's weight afterwards.

        Raises:
            ConfigError: an unknown arm (or the primary, whose share is the rest), a weight
                outside 0..1, or weights summing above 1. Nothing changes then.
        """
        merged = dict(self.weights)
        for arm, weight in weights.items():
            if arm == self.primary:
                raise ConfigError(
                    f"the primary {arm!r} takes what the other arms leave; set theirs",
                    path="weights",
                )
            if arm not in self.arms:
                raise ConfigError(
                    f"no arm {arm!r}; the arms are " + ", ".join(self.arms), path="weights"
                )
            if not 0.0 <= weight <= 1.0:
                raise ConfigError(
                    f"{arm}: must be between 0% and 100%, got {weight!r}", path="weights"
                )
            merged[arm] = float(weight)
        for arm in self.arms[1:]:
            merged.setdefault(arm, 0.0)
        total = sum(merged.values())
        if total > 1.0 + 1e-9:
            raise ConfigError(
                f"the arms' weights add up to {format_percent(total)}, more than 100%",
                path="weights",
            )
        self.weights = {arm: merged[arm] for arm in self.arms[1:]}
        bounds: list[tuple[float, str]] = []
        edge = 0.0
        for arm in self.arms[1:]:
            edge += self.weights[arm]
            bounds.append((edge, arm))
        self._bounds = tuple(bounds)
        return dict(self.weights)

    def shares(self) -> dict[str, float]:
        """Every arm's fraction of split traffic, the primary's included."""
        rest = max(0.0, 1.0 - sum(self.weights.values()))
        return {self.primary: rest, **self.weights}

    def arm_at(self, point: float) -> str:
        """The arm owning ``point`` in ``[0, 1)``."""
        for edge, arm in self._bounds:
            if point < edge:
                return arm
        return self.primary

    @staticmethod
    def point(key: str) -> float:
        """A user's stable point in ``[0, 1)`` (see the module)."""
        return key_hash(key, seed=STICKY_SEED) / 2.0**64

    def arm_for_key(self, key: str | None) -> str:
        """The split's arm for a user's key (None: a random point), match rules aside."""
        if key is not None:
            return self.arm_at(self.point(key))
        return self.arm_at(self.rng.random())

    def assign(
        self,
        *,
        method: str,
        path: str,
        query: str = "",
        headers: Sequence[tuple[str, str]] = (),
        client: str = "",
    ) -> Assignment:
        """The arm for one request."""
        for rule in self.routes:
            if rule.matches(method, path, query, headers):
                return Assignment(rule.arm, "route")
        if self.sticky is not None:
            key = self.sticky.extract(client, headers)
            if key is not None:
                return Assignment(self.arm_at(self.point(key)), "sticky")
        return Assignment(self.arm_at(self.rng.random()), "random")
