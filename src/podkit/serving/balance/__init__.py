"""``podkit balance``: a load balancer with readiness probes, outlier ejection and affinity.

The decisions (endpoint health, picking, retries, membership) are sans-IO classes re-exported
here; the asyncio shell that runs them on the HTTP engine lives in ``podkit.serving.balance.app``.
"""

from podkit.serving.balance._affinity import AffinityKey, client_ip, parse_networks
from podkit.serving.balance._backends_file import (
    BackendSpec,
    normalise_url,
    parse_backend,
    parse_backends,
    read_backends_file,
)
from podkit.serving.balance._endpoint import (
    TRANSITIONS,
    Endpoint,
    EndpointSnapshot,
    EndpointState,
    HealthPolicy,
    IllegalTransition,
    Outcome,
)
from podkit.serving.balance._hashing import HashingRank
from podkit.serving.balance._pickers import (
    HashPicker,
    LeastRequestPicker,
    Picker,
    RoundRobinPicker,
)
from podkit.serving.balance._pool import EndpointPool, PoolStatistics, Transition
from podkit.serving.balance._retry import RetryBudget, RetryBudgetStatistics

__all__ = [
    "TRANSITIONS",
    "AffinityKey",
    "BackendSpec",
    "Endpoint",
    "EndpointPool",
    "EndpointSnapshot",
    "EndpointState",
    "HashPicker",
    "HashingRank",
    "HealthPolicy",
    "IllegalTransition",
    "LeastRequestPicker",
    "Outcome",
    "Picker",
    "PoolStatistics",
    "RetryBudget",
    "RetryBudgetStatistics",
    "RoundRobinPicker",
    "Transition",
    "client_ip",
    "normalise_url",
    "parse_backend",
    "parse_backends",
    "parse_networks",
    "read_backends_file",
]
