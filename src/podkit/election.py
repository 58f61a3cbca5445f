"""Ownership election: ``Election``, ``Lock`` and lease backends (sqlite, redis, etcd).

See ``docs/election.md``. The implementation lives in :mod:`podkit.serving.election` and
:mod:`podkit.backends`.
"""

from podkit.errors import BackendError, BackendUnavailable, LeaseLost
from podkit.serving.election import (
    DEFAULT_TTL,
    AcquireResult,
    Election,
    ElectionStatistics,
    Grant,
    Holder,
    LeaseBackend,
    LeaseElector,
    LeaseTiming,
    Lock,
    Role,
    Term,
    default_identity,
    open_lease_backend,
)

__all__ = [
    "DEFAULT_TTL",
    "AcquireResult",
    "BackendError",
    "BackendUnavailable",
    "Election",
    "ElectionStatistics",
    "Grant",
    "Holder",
    "LeaseBackend",
    "LeaseElector",
    "LeaseLost",
    "LeaseTiming",
    "Lock",
    "Role",
    "Term",
    "default_identity",
    "open_lease_backend",
]
