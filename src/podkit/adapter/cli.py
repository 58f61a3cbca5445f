"""``podkit adapt``: the adapters (metrics, logs, health), each loaded only when it runs."""

from __future__ import annotations

import click

from podkit.cli import PodkitGroup

# name -> "module:attribute" of a click command. Keep sorted by name.
ADAPTERS: dict[str, str] = {
    "health": "podkit.adapter.health._command:command",
    "logs": "podkit.adapter.logs._command:command",
    "metrics": "podkit.adapter.metrics._command:command",
}


@click.group(name="adapt", cls=PodkitGroup, lazy=ADAPTERS)
def group() -> None:
    """Adapters: present what an application offers in the form the rest of the system expects.

    metrics: a server's statistics (Redis, memcached, nginx, HAProxy, PostgreSQL, JSON, statsd,
    a command) as a Prometheus page. logs: any log format as one schema (OpenTelemetry or ECS).
    health: rich checks behind /healthz and /readyz.
    """
