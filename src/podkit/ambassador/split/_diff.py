"""Response diffs: how a candidate's answer differs from the primary's, noise set apart.

Theory of operation (the idea of Twitter's Diffy). A request goes to the primary, to the
candidate (the shadow) and, when given, to a second instance of the primary. Two answers are
compared field by field: the status, the header fields (minus an ignore list of fields that
differ on every answer: ``Date``, ``Server``, ``Set-Cookie`` values...), and the body: JSON
bodies member by member with a JSONPath-like path (``$.user.name``, ``$.items[2].id``),
other bodies as a whole. Paths that also differ between the two primaries for the same
request are *noise* (a timestamp, a random id): they are counted as such and not as
regressions. A request is a regression when one of its differing paths is not noise.

:class:`DiffBoard` keeps the counts per route (method and path) and per path, and a few
example pairs, all within fixed bounds, so an endless stream of distinct URLs cannot grow it.
Everything here is sans-IO: the shell hands it captured answers.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_IGNORED_HEADERS = frozenset(
    {
        "date",
        "server",
        "set-cookie",
        "age",
        "expires",
        "last-modified",
        "etag",
        "via",
        "x-request-id",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
    }
)
# The bounds of a DiffBoard's memory and work (each has a flag and a config key, DiffLimits).
MAX_ROUTES = 64  # distinct routes tracked; later ones are counted under "other"
MAX_PATHS_PER_ROUTE = 256  # distinct JSON paths tracked per route; later ones under "$.other"
MAX_EXAMPLES = 5  # example pairs kept per route (the latest)
MAX_EXAMPLE_BODY = 2048  # bytes of each body kept in an example
MAX_DIFFERENCES = 1000  # differences collected per pair; a body this different is one "body"
MAX_DEPTH = 64  # JSON nesting followed; deeper values are compared whole
MAX_DIFF_BODY = 1024 * 1024  # answers larger than this (either side) are not compared
OTHER_ROUTE = "other"
OTHER_PATH = "$.other"


@dataclass(frozen=True, slots=True)
class DiffLimits:
    """The bounds of response diffs: memory kept and work done per compared pair.

    Attributes:
        max_routes: distinct routes tracked (``other`` counts the rest; at least 2).
        max_paths: distinct paths tracked per route (``$.other`` counts the rest; at least 2).
        examples: example pairs kept per route (0 keeps none).
        example_body: bytes of each body kept in an example.
        max_differences: differences collected per pair; more is reported as one ``body``.
        max_depth: JSON nesting followed; deeper values are compared whole.
        max_body: answers larger than this are not compared (read up to it).
    """

    max_routes: int = MAX_ROUTES
    max_paths: int = MAX_PATHS_PER_ROUTE
    examples: int = MAX_EXAMPLES
    example_body: int = MAX_EXAMPLE_BODY
    max_differences: int = MAX_DIFFERENCES
    max_depth: int = MAX_DEPTH
    max_body: int = MAX_DIFF_BODY

    # field -> (lowest, highest): a bound of memory or work that is still a bound
    RANGES = {  # noqa: RUF012 - a class constant of a slotted dataclass, never mutated
        "max_routes": (2, 100_000),
        "max_paths": (2, 100_000),
        "examples": (0, 1000),
        "example_body": (0, 1024 * 1024),
        "max_differences": (1, 1_000_000),
        "max_depth": (1, 1000),
        "max_body": (1, 1024 * 1024 * 1024),
    }

    def problems(self) -> list[tuple[str, str]]:
        """``(field, reason)`` for each value out of its range (empty when all are valid)."""
        found = []
        for name, (low, high) in self.RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                found.append((name, f"expected {low}-{high}, got {value}"))
        return found


@dataclass(frozen=True, slots=True)
class Captured:
    """One answer as compared: status, header fields (lower-case names) and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Difference:
    """One differing path and the two values (short text)."""

    path: str
    primary: str
    candidate: str


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 200 else text[:197] + "..."


def _json(body: bytes) -> tuple[bool, Any]:
    if not body:
        return False, None
    first = body.lstrip()[:1]
    if first not in (b"{", b"["):
        return False, None
    try:
        return True, json.loads(body)
    except ValueError:
        return False, None


def _walk(a: Any, b: Any, path: str, out: list[Difference], depth: int, limits: DiffLimits) -> None:
    if len(out) >= limits.max_differences:
        return
    if isinstance(a, dict) and isinstance(b, dict) and depth < limits.max_depth:
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if _plain(key) else f"{path}[{json.dumps(key)}]"
            if key not in a:
                out.append(Difference(sub, "(absent)", _short(b[key])))
            elif key not in b:
                out.append(Difference(sub, _short(a[key]), "(absent)"))
            else:
                _walk(a[key], b[key], sub, out, depth + 1, limits)
        return
    if isinstance(a, list) and isinstance(b, list) and depth < limits.max_depth:
        if len(a) != len(b):
            out.append(Difference(f"{path}.length", str(len(a)), str(len(b))))
        for index, (x, y) in enumerate(zip(a, b, strict=False)):
            _walk(x, y, f"{path}[{index}]", out, depth + 1, limits)
        return
    if a != b or type(a) is not type(b):
        out.append(Difference(path, _short(a), _short(b)))


def _plain(key: str) -> bool:
    return key.isidentifier()


def compare(
    primary: Captured,
    candidate: Captured,
    *,
    ignored_headers: Iterable[str] = (),
    limits: DiffLimits = DiffLimits(),
) -> list[Difference]:
    """The differences between two answers (empty when they agree).

    Paths: ``status``, ``header:NAME``, ``body`` (a non-JSON body, one side not JSON, or more
    than ``limits.max_differences`` differences) and ``$...`` for JSON members.
    """
    out: list[Difference] = []
    if primary.status != candidate.status:
        out.append(Difference("status", str(primary.status), str(candidate.status)))
    ignored = set(ignored_headers)
    pa = _fields(primary.headers, ignored)
    ca = _fields(candidate.headers, ignored)
    out.extend(
        Difference(f"header:{name}", pa.get(name, "(absent)"), ca.get(name, "(absent)"))
        for name in sorted(set(pa) | set(ca))
        if pa.get(name) != ca.get(name)
    )
    if primary.body == candidate.body:
        return out
    p_ok, p_doc = _json(primary.body)
    c_ok, c_doc = _json(candidate.body)
    if p_ok and c_ok:
        found: list[Difference] = []
        _walk(p_doc, c_doc, "$", found, 0, limits)
        if len(found) >= limits.max_differences:
            out.append(Difference("body", f"{len(primary.body)} bytes", f"{len(candidate.body)}"))
        else:
            out.extend(found)
    else:
        out.append(Difference("body", f"{len(primary.body)} bytes", f"{len(candidate.body)} bytes"))
    return out


def _fields(headers: Sequence[tuple[str, str]], ignored: set[str]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in ignored:
            continue
        merged[lname] = f"{merged[lname]}, {value}" if lname in merged else value
    return merged


@dataclass(slots=True)
class PathCounts:
    """Per path of one route: pairs where it differed, where that was noise, and the rest."""

    mismatches: int = 0
    noise: int = 0
    regressions: int = 0


@dataclass(slots=True)
class RouteCounts:
    """One route's comparisons."""

    compared: int = 0
    mismatched: int = 0
    regressions: int = 0
    noisy: int = 0
    paths: dict[str, PathCounts] = field(default_factory=dict)
    examples: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_EXAMPLES))

    @classmethod
    def keeping(cls, examples: int) -> RouteCounts:
        return cls(examples=deque(maxlen=examples))


@dataclass(frozen=True, slots=True)
class DiffResult:
    """One compared request: its route, every differing path, the noisy ones and whether it
    is a regression (a differing path that is not noise)."""

    route: str
    differences: tuple[Difference, ...]
    noise: frozenset[str]

    @property
    def regression_paths(self) -> list[str]:
        return [d.path for d in self.differences if d.path not in self.noise]

    @property
    def regression(self) -> bool:
        return bool(self.regression_paths)


def _example_body(body: bytes, limit: int) -> str:
    text = body[:limit].decode("utf-8", "replace")
    return text + ("..." if len(body) > limit else "")


class DiffBoard:
    """Counts of compared answers per route and per path, with bounded example pairs.

    Args:
        ignored_headers: header names (any case) left out of comparisons.
        limits: the bounds of memory and work.
    """

    def __init__(
        self,
        ignored_headers: Iterable[str] = DEFAULT_IGNORED_HEADERS,
        *,
        limits: DiffLimits = DiffLimits(),
    ) -> None:
        self.ignored_headers = frozenset(h.lower() for h in ignored_headers)
        self.limits = limits
        self.routes: dict[str, RouteCounts] = {}
        self.compared = 0
        self.regressions = 0

    def _route(self, route: str) -> tuple[str, RouteCounts]:
        found = self.routes.get(route)
        if found is not None:
            return route, found
        if len(self.routes) >= self.limits.max_routes - 1:  # "other" is one of them
            route = OTHER_ROUTE
            found = self.routes.get(route)
            if found is not None:
                return route, found
        found = self.routes[route] = RouteCounts.keeping(self.limits.examples)
        return route, found

    def record(
        self,
        route: str,
        primary: Captured,
        candidate: Captured,
        primary_b: Captured | None = None,
        *,
        request: str = "",
    ) -> DiffResult:
        """Compare one request's answers and count the result.

        Args:
            route: the route's name (``GET /users``).
            primary, candidate: the two answers.
            primary_b: the second primary's answer, for noise, or None.
            request: the request line, kept with an example.
        """
        ignored, limits = self.ignored_headers, self.limits
        differences = compare(primary, candidate, ignored_headers=ignored, limits=limits)
        noise: frozenset[str] = frozenset()
        if primary_b is not None:
            noise = frozenset(
                d.path for d in compare(primary, primary_b, ignored_headers=ignored, limits=limits)
            )
        route, counts = self._route(route)
        result = DiffResult(route, tuple(differences), noise)
        counts.compared += 1
        self.compared += 1
        if differences:
            counts.mismatched += 1
        if any(d.path in noise for d in differences):
            counts.noisy += 1
        for d in differences:
            path = d.path
            if path not in counts.paths and len(counts.paths) >= limits.max_paths - 1:
                path = OTHER_PATH
            entry = counts.paths.setdefault(path, PathCounts())
            entry.mismatches += 1
            if d.path in noise:
                entry.noise += 1
            else:
                entry.regressions += 1
        if result.regression:
            counts.regressions += 1
            self.regressions += 1
        if result.regression and limits.examples:
            counts.examples.append(
                {
                    "request": request,
                    "paths": result.regression_paths[:20],
                    "differences": [
                        {"path": d.path, "primary": d.primary, "candidate": d.candidate}
                        for d in differences[:20]
                    ],
                    "primary": {
                        "status": primary.status,
                        "body": _example_body(primary.body, limits.example_body),
                    },
                    "candidate": {
                        "status": candidate.status,
                        "body": _example_body(candidate.body, limits.example_body),
                    },
                }
            )
        return result

    def statistics(self) -> dict[str, Any]:
        """The ``GET /diff`` JSON: per route and per path, counts and rates, and examples."""

        def rate(n: int, d: int) -> float:
            return round(n / d, 6) if d else 0.0

        routes: dict[str, Any] = {}
        for name, counts in sorted(self.routes.items()):
            routes[name] = {
                "compared": counts.compared,
                "mismatched": counts.mismatched,
                "regressions": counts.regressions,
                "mismatch_rate": rate(counts.mismatched, counts.compared),
                "noise_rate": rate(counts.noisy, counts.compared),
                "regression_rate": rate(counts.regressions, counts.compared),
                "paths": {
                    path: {
                        "mismatches": p.mismatches,
                        "noise": p.noise,
                        "regressions": p.regressions,
                        "mismatch_rate": rate(p.mismatches, counts.compared),
                        "noise_rate": rate(p.noise, counts.compared),
                        "regression_rate": rate(p.regressions, counts.compared),
                    }
                    for path, p in sorted(counts.paths.items())
                },
                "examples": list(counts.examples),
            }
        return {
            "compared": self.compared,
            "regressions": self.regressions,
            "regression_rate": rate(self.regressions, self.compared),
            "ignored_headers": sorted(self.ignored_headers),
            "limits": {name: getattr(self.limits, name) for name in DiffLimits.RANGES},
            "routes": routes,
        }
