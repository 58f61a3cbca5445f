"""Errors of the data-plane engines.

Each carries the HTTP status a proxy answers with (``status``) and whether any byte of the
request reached the upstream (``request_sent``). A policy decides from these alone whether a
retry is safe: when ``request_sent`` is false nothing happened upstream, so any request may be
sent again elsewhere; when it is true, only idempotent requests may be.
"""

from __future__ import annotations

from podkit.errors import PodkitError, PodkitTimeout


class UpstreamError(PodkitError):
    """An upstream could not give a response.

    Attributes:
        status: the status a proxy answers the client with (502, 503 or 504).
        upstream: the upstream's ``host:port`` (empty when none was chosen).
        request_sent: whether any byte of the request was written to the upstream.
    """

    status: int = 502

    def __init__(self, message: str, *, upstream: str = "", request_sent: bool = False) -> None:
        self.upstream = upstream
        self.request_sent = request_sent
        super().__init__(f"{upstream}: {message}" if upstream else message)


class UpstreamConnectError(UpstreamError):
    """The connection to the upstream failed: nothing was sent, a retry is always safe (502)."""

    def __init__(self, message: str, *, upstream: str = "") -> None:
        super().__init__(message, upstream=upstream, request_sent=False)


class UpstreamTimeout(UpstreamError, PodkitTimeout):
    """The upstream did not answer (or stopped sending) within the response timeout (504)."""

    status = 504


class UpstreamClosed(UpstreamError):
    """The upstream closed the connection or broke the protocol before a full response (502)."""


class NoUpstreamAvailable(UpstreamError):
    """No upstream is ready, or all of them are at their connection limit (503)."""

    status = 503

    def __init__(self, message: str = "no upstream available", *, upstream: str = "") -> None:
        super().__init__(message, upstream=upstream, request_sent=False)


__all__ = [
    "NoUpstreamAvailable",
    "UpstreamClosed",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamTimeout",
]
