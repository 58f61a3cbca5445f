"""``--inject-delay``: a leaf that is slow on a share of its requests, for tests and benchmarks.

``10x@5%`` holds 5 % of the answers until ten times the leaf's live median search time
has passed (a median below ``INJECT_FLOOR`` counts as that floor); ``50ms@5%`` adds a
fixed 50 ms. The draw uses its own seeded random source, so a benchmark is repeatable.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from podkit.errors import ConfigError
from podkit.runtime import parse_duration

INJECT_FLOOR = 0.001  # a median below 1 ms is timer noise; "10x" means at least 10 ms
MAX_FACTOR = 1000.0  # a thousand times slower is a dead leaf, which a test kills instead
_FORM = re.compile(r"^\s*([0-9.]+)(x|[a-z]+)\s*@\s*([0-9.]+)%\s*$")


@dataclass(frozen=True, slots=True)
class InjectDelay:
    """Slow ``share`` of the answers: by ``factor`` x the median, or by ``seconds``.

    Exactly one of ``factor`` and ``seconds`` is set.
    """

    share: float
    factor: float | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str, *, field: str = "--inject-delay") -> InjectDelay:
        """Parse ``10x@5%`` or ``50ms@5%``.

        Raises:
            ConfigError: another form, a factor below 1 or above MAX_FACTOR, a share
                outside 0-100 %.
        """
        match = _FORM.match(text.lower())
        if match is None:
            raise ConfigError(
                f"expected FACTORx@PERCENT% or DURATION@PERCENT% (10x@5%), got {text!r}", path=field
            )
        amount, unit, percent = match.groups()
        try:
            share = float(percent) / 100
        except ValueError:
            raise ConfigError(f"bad percentage in {text!r}", path=field) from None
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"the share must be 0-100%, got {percent}%", path=field)
        if unit == "x":
            try:
                factor = float(amount)
            except ValueError:
                raise ConfigError(f"bad factor in {text!r}", path=field) from None
            if not 1.0 <= factor <= MAX_FACTOR:
                raise ConfigError(f"the factor must be 1-{MAX_FACTOR:g}, got {amount}", path=field)
            return cls(share, factor=factor)
        try:
            seconds = parse_duration(amount + unit)
        except (ValueError, ConfigError):
            raise ConfigError(f"bad duration in {text!r}", path=field) from None
        return cls(share, seconds=seconds)

    def delay(self, rng: random.Random, median: float) -> float:
        """Seconds to hold this answer (0.0 for most): draws once from ``rng``."""
        if rng.random() >= self.share:
            return 0.0
        if self.seconds is not None:
            return self.seconds
        assert self.factor is not None
        return (self.factor - 1.0) * max(median, INJECT_FLOOR)
