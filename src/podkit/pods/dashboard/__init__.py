"""The dashboard of ``podkit up``: the pods as a graph, their state and live figures, actions.

See ``docs/dashboard.md``. :class:`DashboardCore` decides (no I/O); :func:`open_dashboard`
serves the page beside a running supervisor.
"""

from podkit.pods.dashboard.core import (
    DashboardCore,
    figures,
    histogram_quantile,
    parse_metrics,
    pods_graph,
)
from podkit.pods.dashboard.server import DEFAULT_DASHBOARD_PORT, Dashboard, open_dashboard

__all__ = [
    "DEFAULT_DASHBOARD_PORT",
    "Dashboard",
    "DashboardCore",
    "figures",
    "histogram_quantile",
    "open_dashboard",
    "parse_metrics",
    "pods_graph",
]
