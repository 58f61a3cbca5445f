"""``podkit split``: weighted and sticky request splitting, shadow traffic with response
diffs, and progressive delivery with automatic rollback (the book's request-splitting
ambassador).

The decisions (which arm, how a ramp moves, how two answers differ) are sans-IO classes
re-exported here; the asyncio shell on the HTTP engine lives in
``podkit.ambassador.split.app``.
"""

from podkit.ambassador.split._assign import (
    PRIMARY,
    Assignment,
    RouteRule,
    SplitTable,
    StickyKey,
    format_percent,
    parse_percent,
)
from podkit.ambassador.split._config import ArmSpec, TableSpec, read_split_config
from podkit.ambassador.split._diff import (
    DEFAULT_IGNORED_HEADERS,
    Captured,
    DiffBoard,
    Difference,
    DiffLimits,
    DiffResult,
    compare,
)
from podkit.ambassador.split._ramp import (
    TRANSITIONS,
    IllegalRampTransition,
    Ramp,
    RampDecision,
    RampState,
    RollbackRule,
    parse_rollback_rules,
    parse_steps,
)
from podkit.ambassador.split._shadow import ShadowJob, ShadowMirror

__all__ = [
    "DEFAULT_IGNORED_HEADERS",
    "PRIMARY",
    "TRANSITIONS",
    "ArmSpec",
    "Assignment",
    "Captured",
    "DiffBoard",
    "DiffLimits",
    "DiffResult",
    "Difference",
    "IllegalRampTransition",
    "Ramp",
    "RampDecision",
    "RampState",
    "RollbackRule",
    "RouteRule",
    "ShadowJob",
    "ShadowMirror",
    "SplitTable",
    "StickyKey",
    "TableSpec",
    "compare",
    "format_percent",
    "parse_percent",
    "parse_rollback_rules",
    "parse_steps",
    "read_split_config",
]
