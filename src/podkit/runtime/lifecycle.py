"""The lifecycle of a component as a state machine (sans-IO: no clock, no signals).

::

    STARTING ──► READY ◄──► NOT_READY
        │          │            │
        └──────────┴────────────┴──► DRAINING ──► STOPPED

``/readyz`` answers 200 only in READY; every other phase carries a reason that it reports.
Any phase may go to STOPPED (a forced stop). An illegal transition raises
:class:`IllegalTransition`: it is a bug in the caller, never a runtime condition.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from podkit.errors import PodkitError


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    NOT_READY = "not_ready"
    DRAINING = "draining"
    STOPPED = "stopped"


_ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.READY, Phase.NOT_READY, Phase.DRAINING, Phase.STOPPED}),
    Phase.READY: frozenset({Phase.READY, Phase.NOT_READY, Phase.DRAINING, Phase.STOPPED}),
    Phase.NOT_READY: frozenset({Phase.READY, Phase.NOT_READY, Phase.DRAINING, Phase.STOPPED}),
    Phase.DRAINING: frozenset({Phase.DRAINING, Phase.STOPPED}),
    Phase.STOPPED: frozenset({Phase.STOPPED}),
}


class IllegalTransition(PodkitError):
    """A lifecycle transition that the state machine does not allow."""


@dataclass(frozen=True, slots=True)
class LifecycleSnapshot:
    phase: Phase
    reason: str

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY


class Lifecycle:
    """Holds the phase and the reason shown by ``/readyz``."""

    def __init__(self) -> None:
        self._phase = Phase.STARTING
        self._reason = "starting"

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def reason(self) -> str:
        return self._reason

    def statistics(self) -> LifecycleSnapshot:
        return LifecycleSnapshot(self._phase, self._reason)

    def _move(self, target: Phase, reason: str) -> bool:
        if target not in _ALLOWED[self._phase]:
            raise IllegalTransition(f"cannot go from {self._phase.value} to {target.value}")
        changed = (target, reason) != (self._phase, self._reason)
        self._phase = target
        self._reason = reason
        return changed

    def ready(self) -> bool:
        """Enter READY. Returns whether anything changed. Ignored once draining."""
        if self._phase in (Phase.DRAINING, Phase.STOPPED):
            return False
        return self._move(Phase.READY, "ready")

    def not_ready(self, reason: str) -> bool:
        """Leave rotation with a reason. Ignored once draining."""
        if self._phase in (Phase.DRAINING, Phase.STOPPED):
            return False
        return self._move(Phase.NOT_READY, reason)

    def drain(self, reason: str = "draining") -> bool:
        """Enter DRAINING (idempotent). Returns True only the first time."""
        if self._phase in (Phase.DRAINING, Phase.STOPPED):
            return False
        return self._move(Phase.DRAINING, reason)

    def stop(self, reason: str = "stopped") -> bool:
        return self._move(Phase.STOPPED, reason)
