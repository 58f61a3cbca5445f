"""The end of a listener's close sequence, shared by the HTTP and TCP servers."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client.registry import Collector, CollectorRegistry

SERVER_CLOSE_WAIT = 1.0  # seconds to wait for the listener to report itself closed


async def finish_closing(
    ticker: asyncio.Task[None] | None,
    server: asyncio.Server | None,
    registry: CollectorRegistry | None,
    collector: Collector | None,
) -> None:
    """After the listener stopped and the connections were aborted: stop the deadline ticker,
    wait (briefly) for the listener to close, and take the metrics collector off the registry.
    Each part may be None (never started)."""
    if ticker is not None:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    if server is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), SERVER_CLOSE_WAIT)
    if collector is not None and registry is not None:
        with contextlib.suppress(KeyError):
            registry.unregister(collector)
