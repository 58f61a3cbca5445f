"""The HTTP/1.1 engine: server, upstream pool, forwarding handler and their sans-IO rules.

Patterns plug into it with one signature, ``Handler = async (Request) -> Response``: a
policy is a handler that wraps another (see ``docs/engine.md``).
"""

from podkit.engines.errors import (
    NoUpstreamAvailable,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)
from podkit.engines.http.client import PoolStatistics, Upstream, UpstreamPool, pool_metrics
from podkit.engines.http.messages import (
    EMPTY_BODY,
    Body,
    BodyLike,
    Handler,
    Request,
    Response,
    TLSInfo,
    close_body,
    iter_body,
    read_body,
)
from podkit.engines.http.proxy import Outcome, Pick, proxy_handler, upstream_request_headers
from podkit.engines.http.rules import (
    Forwarding,
    Headers,
    ServerLimits,
    forwarded_headers,
    strip_hop_by_hop,
)
from podkit.engines.http.server import HTTPServer, ServerStatistics, statistics_metrics

__all__ = [
    "EMPTY_BODY",
    "Body",
    "BodyLike",
    "Forwarding",
    "HTTPServer",
    "Handler",
    "Headers",
    "NoUpstreamAvailable",
    "Outcome",
    "Pick",
    "PoolStatistics",
    "Request",
    "Response",
    "ServerLimits",
    "ServerStatistics",
    "TLSInfo",
    "Upstream",
    "UpstreamClosed",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamTimeout",
    "close_body",
    "forwarded_headers",
    "iter_body",
    "pool_metrics",
    "proxy_handler",
    "read_body",
    "statistics_metrics",
    "strip_hop_by_hop",
    "upstream_request_headers",
]
