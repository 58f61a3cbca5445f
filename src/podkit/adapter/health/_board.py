"""The health adapter's decisions (sans-IO): each check's state and the readiness they add up to.

Theory of operation. A check is run by the shell on its own interval; each run ends in a
:class:`CheckResult` (passed or not, how long it took, the error) handed to
:meth:`HealthBoard.record` with the wall-clock time. A check's state is data:

* ``UNKNOWN`` until its first run ends (a fresh adapter is not ready: nothing is known yet);
* ``PASSING`` after a run that passed, ``FAILING`` after one that did not.

``since`` is when the check entered its current state. Readiness is "every required check
is PASSING"; probes only read the board, so however many arrive, no backend sees more than
one check per interval. The verbose text of ``/readyz?verbose`` follows the Kubernetes API
server's (``[+]name ok`` / ``[-]name failed: reason``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from podkit.errors import ConfigError


class CheckState(enum.Enum):
    UNKNOWN = "unknown"
    PASSING = "passing"
    FAILING = "failing"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one run of a check."""

    ok: bool
    latency: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CheckStatus:
    """A frozen view of one check, as ``/checks`` shows it."""

    name: str
    target: str
    required: bool
    state: CheckState
    since: float | None
    last_run: float | None
    latency: float | None
    last_error: str | None
    runs: int
    failures: int

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "target": self.target,
            "required": self.required,
            "state": self.state.value,
            "since": self.since,
            "last_run": self.last_run,
            "latency_seconds": self.latency,
            "last_error": self.last_error,
            "runs": self.runs,
            "failures": self.failures,
        }


class _Check:
    __slots__ = (
        "failures",
        "last_error",
        "last_run",
        "latency",
        "name",
        "required",
        "runs",
        "since",
        "state",
        "target",
    )

    def __init__(self, name: str, target: str, required: bool) -> None:
        self.name = name
        self.target = target
        self.required = required
        self.state = CheckState.UNKNOWN
        self.since: float | None = None
        self.last_run: float | None = None
        self.latency: float | None = None
        self.last_error: str | None = None
        self.runs = 0
        self.failures = 0


class HealthBoard:
    """Every check's state; what ``/readyz`` and ``/checks`` answer from.

    Args:
        checks: ``(name, target)`` of each check, in the order they are shown.
        required: names of the checks readiness needs (``None``: all of them).

    Raises:
        ConfigError: a name is given twice, or ``required`` names an unknown check.
    """

    def __init__(
        self, checks: Sequence[tuple[str, str]], *, required: Iterable[str] | None = None
    ) -> None:
        names = [name for name, _ in checks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"check names must be unique: {', '.join(duplicates)}")
        needed = set(names if required is None else required)
        unknown = sorted(needed - set(names))
        if unknown:
            raise ConfigError(
                f"--ready-requires names unknown checks: {', '.join(unknown)} "
                f"(checks: {', '.join(names) or 'none'})"
            )
        self._checks = {name: _Check(name, target, name in needed) for name, target in checks}

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    def record(self, name: str, result: CheckResult, now: float) -> bool:
        """Store the result of one run of ``name`` at wall time ``now``.

        Returns:
            True when the check changed state.
        """
        check = self._checks[name]
        check.runs += 1
        check.last_run = now
        check.latency = result.latency
        new = CheckState.PASSING if result.ok else CheckState.FAILING
        if not result.ok:
            check.failures += 1
            check.last_error = result.error or "failed"
        else:
            check.last_error = None
        if new is check.state:
            return False
        check.state = new
        check.since = now
        return True

    def status(self, name: str) -> CheckStatus:
        """One check's view.

        Raises:
            KeyError: no check has that name.
        """
        c = self._checks[name]
        return CheckStatus(
            c.name,
            c.target,
            c.required,
            c.state,
            c.since,
            c.last_run,
            c.latency,
            c.last_error,
            c.runs,
            c.failures,
        )

    def statistics(self) -> list[CheckStatus]:
        return [self.status(name) for name in self._checks]

    def ready(self, *, exclude: Iterable[str] = ()) -> bool:
        """Every required check (less ``exclude``) passes."""
        skip = set(exclude)
        return all(
            c.state is CheckState.PASSING
            for c in self._checks.values()
            if c.required and c.name not in skip
        )

    def verbose(self, *, exclude: Iterable[str] = (), endpoint: str = "readyz") -> str:
        """The Kubernetes-style listing: one ``[+]``/``[-]`` line per required check."""
        skip = set(exclude)
        lines = []
        for c in self._checks.values():
            if not c.required:
                continue
            if c.name in skip:
                lines.append(f"[+]{c.name} excluded: ok")
            elif c.state is CheckState.PASSING:
                lines.append(f"[+]{c.name} ok")
            elif c.state is CheckState.UNKNOWN:
                lines.append(f"[-]{c.name} failed: not checked yet")
            else:
                lines.append(f"[-]{c.name} failed: {c.last_error}")
        verdict = "passed" if self.ready(exclude=skip) else "failed"
        lines.append(f"{endpoint} check {verdict}")
        return "\n".join(lines) + "\n"

    def reason(self) -> str:
        """Why the board is not ready (the failing required checks), or ``""``."""
        bad = [
            c.name
            for c in self._checks.values()
            if c.required and c.state is not CheckState.PASSING
        ]
        return "" if not bad else "failing: " + ", ".join(bad)
