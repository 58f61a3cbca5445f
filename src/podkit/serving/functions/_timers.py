"""Timer schedules: fixed intervals and five-field cron expressions (UTC), sans-IO.

Interval timers fire at multiples of their interval since the epoch, as cron fires at whole
minutes, so the processes of one backend agree on each firing's time. A cron expression is
``minute hour day-of-month month day-of-week`` with ``*``, ``*/N``, ``A-B``, ``A-B/N`` and
comma lists, as in POSIX crontab (day-of-week 0-7, Sunday being 0 and 7). When both day
fields are restricted a time matches either, as cron does."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

from podkit.errors import UsageError

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("weekday", 0, 7))
_SEARCH_MINUTES = 366 * 24 * 60 * 5  # an expression with no match in five years is refused


def _parse_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise UsageError(f"cron {name}: bad step {step_text!r}")
            step = int(step_text)
        if body == "*":
            start, end = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            if not (a.isdigit() and b.isdigit()):
                raise UsageError(f"cron {name}: bad range {body!r}")
            start, end = int(a), int(b)
        elif body.isdigit():
            start = int(body)
            end = high if step_text else start
        else:
            raise UsageError(f"cron {name}: expected *, N, A-B or */N, got {body!r}")
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise UsageError(f"cron {name}: {body!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A parsed cron expression; :meth:`next_after` gives its next time."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        """Parse ``expression``.

        Raises:
            UsageError: not five valid fields.
        """
        parts = expression.split()
        if len(parts) != 5:
            raise UsageError(f"a cron expression has five fields, got {expression!r}")
        sets = [_parse_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])
        schedule = cls(
            expression=" ".join(parts),
            minutes=sets[0],
            hours=sets[1],
            days=sets[2],
            months=sets[3],
            weekdays=weekdays,
            any_day=parts[2] == "*",
            any_weekday=parts[4] == "*",
        )
        schedule.next_after(0.0)  # refuses an expression that never matches
        return schedule

    def _day_matches(self, moment: datetime.datetime) -> bool:
        day_ok = moment.day in self.days
        weekday_ok = (moment.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok

    def next_after(self, now: float) -> float:
        """The first matching minute strictly after ``now`` (seconds since the epoch, UTC).

        Raises:
            UsageError: the expression never matches (e.g. ``0 0 31 2 *``).
        """
        moment = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).replace(
            second=0, microsecond=0
        ) + datetime.timedelta(minutes=1)
        for _ in range(_SEARCH_MINUTES):
            if moment.month not in self.months or not self._day_matches(moment):
                moment = (moment + datetime.timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if moment.hour not in self.hours:
                moment = (moment + datetime.timedelta(hours=1)).replace(minute=0)
                continue
            if moment.minute in self.minutes:
                return moment.timestamp()
            moment += datetime.timedelta(minutes=1)
        raise UsageError(f"cron expression {self.expression!r} never matches")


def next_interval(after: float, every: float) -> float:
    """The next run of an interval timer: the first multiple of ``every`` seconds since the
    epoch strictly after ``after``. Every process on a backend computes the same times, so
    they can agree on which one runs each (missed runs are skipped)."""
    return (math.floor(after / every) + 1) * every
