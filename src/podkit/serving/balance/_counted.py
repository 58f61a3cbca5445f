"""A backend's streamed response body that ends its attempt when it ends (pure Python: it is
an async iterator, and the balancer's compiled direct path hands bodies to it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from podkit.engines.http import Body
from podkit.serving.balance._endpoint import Outcome


class CountedBody(Body):
    """A backend's response body that ends its attempt when it ends.

    ``on_end`` is called exactly once: with None when the body arrived whole (the outcome
    the head gave stands), ``FAILURE`` when the backend broke it off, ``ABANDONED`` when it
    was closed before its end (the client went away).
    """

    __slots__ = ("_on_end", "_source")

    def __init__(self, source: Body, on_end: Callable[[Outcome | None], None]) -> None:
        super().__init__(length=source.length)
        self._source = source
        self._on_end: Callable[[Outcome | None], None] | None = on_end

    async def __anext__(self) -> bytes:
        try:
            return await self._source.__anext__()
        except StopAsyncIteration:
            self._end(None)
            raise
        except asyncio.CancelledError:
            raise  # the consumer was cancelled; its close() follows
        except BaseException:
            self._end(Outcome.FAILURE)
            raise

    def _end(self, outcome: Outcome | None) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(outcome)

    def close(self) -> None:
        """Stop reading: the rest is dropped and the attempt ends as abandoned."""
        self._source.close()
        self._end(Outcome.ABANDONED)

    async def aclose(self) -> None:
        """Same as :meth:`close`."""
        self.close()

    def __del__(self) -> None:
        # A response dropped without being sent or closed (its client was gone before the
        # head could be written) must not hold its backend's in-flight count forever.
        if self._on_end is not None:
            self.close()
