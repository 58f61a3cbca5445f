"""Ownership election: leases with fencing tokens, leader election and locks.

Public names are re-exported from :mod:`podkit.election`.
"""

from podkit.backends.leases import AcquireResult, Grant, Holder, LeaseBackend, open_lease_backend
from podkit.serving.election.election import (
    Election,
    ElectionStatistics,
    Lock,
    Term,
    default_identity,
)
from podkit.serving.election.lease import (
    DEFAULT_TTL,
    Action,
    Decision,
    IllegalTransition,
    LeaseElector,
    LeaseTiming,
    Role,
)

__all__ = [
    "DEFAULT_TTL",
    "AcquireResult",
    "Action",
    "Decision",
    "Election",
    "ElectionStatistics",
    "Grant",
    "Holder",
    "IllegalTransition",
    "LeaseBackend",
    "LeaseElector",
    "LeaseTiming",
    "Lock",
    "Role",
    "Term",
    "default_identity",
    "open_lease_backend",
]
