"""Pods on one machine: the pod file, the supervisor and ``podkit up``.

The pod file (:class:`PodFile`) names pods, their containers, probes, restart policy and start
order; :class:`SupervisorCore` makes the decisions and :class:`PodSupervisor` runs the
processes. See ``docs/pods.md``.
"""

from podkit.pods.core import (
    BackoffPolicy,
    ContainerKey,
    ContainerState,
    ContainerStatus,
    ReplicaKey,
    SupervisorCore,
)
from podkit.pods.model import (
    Container,
    Discovery,
    Pod,
    PodFile,
    ReadyProbe,
    check_podfile,
    json_schema,
    load_podfile,
    parse_podfile,
    replica_ip,
)
from podkit.pods.supervisor import PodSupervisor, probe_once, request

__all__ = [
    "BackoffPolicy",
    "Container",
    "ContainerKey",
    "ContainerState",
    "ContainerStatus",
    "Discovery",
    "Pod",
    "PodFile",
    "PodSupervisor",
    "ReadyProbe",
    "ReplicaKey",
    "SupervisorCore",
    "check_podfile",
    "json_schema",
    "load_podfile",
    "parse_podfile",
    "probe_once",
    "replica_ip",
    "request",
]
