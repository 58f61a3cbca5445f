"""The open barrier: a group of children that may grow while it runs, decided exactly once.

Theory of operation. A *group* (one job: the files of one run, the pages of one crawl) counts
its children instead of listing them, so it holds O(1) state whatever its size:

* ``created``: children known so far. The producer adds children while the group is open;
  a child may add children of its own (grandchildren) *in the same step that finishes it*,
  so the count of unfinished children never drops to zero while work remains;
* ``done`` and ``failed``: children finished, by success or by running out of attempts;
* ``sealed``: the producer promised to add no more children of its own.

The group is *complete* when it is sealed and every known child has finished
(``created == done + failed``). Because only unfinished children can add children, a
complete group stays complete: the decision cannot be premature. A :class:`BarrierPolicy`
turns the counts into an outcome: ``all`` (every child must succeed), ``allow_failures: N``
(at most N may fail) or ``quorum: P%`` (succeed as soon as the group is sealed and P% of
the children known at that moment have succeeded, without waiting for stragglers).

The barrier *fires* once: the shell fires at the first outcome :func:`decide` returns and
stores ``fired`` (per group and barrier stage) in the same transaction that writes the
group's result, so a crash either loses both (the next worker fires) or keeps both (nobody fires
again). Duplicate deliveries of a child are the store's business: it recognises a child by
its id and applies each child's step once, so this core sees every step exactly once.

This module is sans-IO: no clock, no sockets, no store. Celery chords and RQ dependencies
need the children up front; Dramatiq groups cannot grow. This barrier can.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, replace
from fractions import Fraction

from podkit.errors import PodkitError


class IllegalGroupStep(PodkitError):
    """A step that cannot happen to a group (finishing more children than it has)."""


class Outcome(enum.Enum):
    """What a fired barrier says about its group."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class BarrierPolicy:
    """When a group's barrier fires and with which outcome.

    Attributes:
        allow_failures: children that may fail before the group fails (``all`` is 0).
        quorum: share of the known children that must succeed (None: all of the rest).
    """

    allow_failures: int = 0
    quorum: Fraction | None = None

    @classmethod
    def parse(
        cls, *, allow_failures: int | None = None, quorum: str | None = None
    ) -> BarrierPolicy:
        """The policy of a pipeline file's fields (none given: ``all``).

        Raises:
            ValueError: both given, a negative count, or a share outside (0, 100]%.
        """
        if allow_failures is not None and quorum is not None:
            raise ValueError("give allow_failures or quorum, not both")
        if quorum is not None:
            match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$", quorum)
            share = Fraction(match.group(1)) / 100 if match else Fraction(-1)
            if not 0 < share <= 1:
                raise ValueError(f"expected a share such as 90%, got {quorum!r}")
            return cls(quorum=share)
        if allow_failures is not None and allow_failures < 0:
            raise ValueError("allow_failures must not be negative")
        return cls(allow_failures=allow_failures or 0)

    def describe(self) -> str:
        if self.quorum is not None:
            return f"quorum {float(self.quorum * 100):g}%"
        if self.allow_failures:
            return f"allow_failures {self.allow_failures}"
        return "all"


ALL = BarrierPolicy()


@dataclass(frozen=True, slots=True)
class GroupState:
    """The counts of one group (O(1) whatever the number of children)."""

    created: int = 0
    done: int = 0
    failed: int = 0
    sealed: bool = False

    @property
    def outstanding(self) -> int:
        """Children known and not finished."""
        return self.created - self.done - self.failed

    @property
    def complete(self) -> bool:
        return self.sealed and self.outstanding == 0

    def add(self, n: int = 1) -> GroupState:
        """``n`` children joined the group (the producer's, while it is open).

        Raises:
            IllegalGroupStep: ``n`` is negative, or the group is sealed and nothing in it is
                still running (no one may add children to a finished group).
        """
        if n < 0:
            raise IllegalGroupStep("cannot add a negative number of children")
        if n and self.complete:
            raise IllegalGroupStep("the group is sealed and finished; no child can join it")
        return replace(self, created=self.created + n)

    def finish(self, *, ok: bool, children: int = 0) -> GroupState:
        """One child finished (``ok`` or failed for good), adding ``children`` of its own.

        Raises:
            IllegalGroupStep: no child is outstanding, or ``children`` is negative.
        """
        if children < 0:
            raise IllegalGroupStep("cannot add a negative number of children")
        if self.outstanding <= 0:
            raise IllegalGroupStep("no child of the group is outstanding")
        return replace(
            self,
            created=self.created + children,
            done=self.done + (1 if ok else 0),
            failed=self.failed + (0 if ok else 1),
        )

    def seal(self) -> GroupState:
        """The producer adds no more children (idempotent)."""
        return self if self.sealed else replace(self, sealed=True)

    def finish_many(self, *, done: int, failed: int, children: int) -> GroupState:
        """Several children finished at once (one batch of a worker): the same as that many
        :meth:`finish` calls, applied together.

        Raises:
            IllegalGroupStep: a count is negative, or more children finish than are
                outstanding.
        """
        if min(done, failed, children) < 0:
            raise IllegalGroupStep("counts must not be negative")
        if done + failed > self.outstanding:
            raise IllegalGroupStep(
                f"{done + failed} children finish but {self.outstanding} are outstanding"
            )
        if done + failed == 0 and children and self.complete:
            raise IllegalGroupStep("the group is sealed and finished; no child can join it")
        return replace(
            self,
            created=self.created + children,
            done=self.done + done,
            failed=self.failed + failed,
        )


def decide(state: GroupState, policy: BarrierPolicy = ALL) -> Outcome | None:
    """The outcome to fire now, or None (not decided yet).

    The caller fires at the first outcome and never again for that group and barrier: a
    later call may answer differently (a quorum met, then more grandchildren joined).

    ``all`` / ``allow_failures: N``: FAILED as soon as more than N children failed (the group
    cannot succeed any more); SUCCEEDED when the group is complete. ``quorum``: once sealed,
    SUCCEEDED as soon as the share of the known children succeeded; FAILED when the group is
    complete short of it.
    """
    if policy.quorum is not None:
        if not state.sealed or state.created == 0:
            return Outcome.SUCCEEDED if state.complete else None
        needed = math.ceil(policy.quorum * state.created)
        if state.done >= needed:
            return Outcome.SUCCEEDED
        return Outcome.FAILED if state.complete else None
    if state.failed > policy.allow_failures:
        return Outcome.FAILED
    return Outcome.SUCCEEDED if state.complete else None
