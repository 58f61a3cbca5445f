"""Health adapter: rich checks (Redis, PostgreSQL, TCP, HTTP, a command) behind simple probes."""

from podkit.adapter.health._adapter import DEFAULT_INTERVAL, DEFAULT_TIMEOUT, HealthAdapter
from podkit.adapter.health._board import (
    CheckResult,
    CheckState,
    CheckStatus,
    HealthBoard,
)
from podkit.adapter.health._checks import CheckFailed, CheckSpec, parse_check, run_check
from podkit.adapter.health._command import command, serve_health

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_TIMEOUT",
    "CheckFailed",
    "CheckResult",
    "CheckSpec",
    "CheckState",
    "CheckStatus",
    "HealthAdapter",
    "HealthBoard",
    "command",
    "parse_check",
    "run_check",
    "serve_health",
]
