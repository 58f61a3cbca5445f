"""The data planes patterns plug their policies into: HTTP/1.1 (:mod:`podkit.engines.http`)
and TCP (:mod:`podkit.engines.tcp`)."""

from podkit.engines.errors import (
    NoUpstreamAvailable,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = [
    "NoUpstreamAvailable",
    "UpstreamClosed",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamTimeout",
]
