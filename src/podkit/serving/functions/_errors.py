"""Errors a function invocation can end with; each carries the HTTP status to answer."""

from __future__ import annotations

from podkit.errors import PodkitError, PodkitTimeout


class FunctionError(PodkitError):
    """An invocation was refused or failed. ``status`` is what an HTTP trigger answers."""

    status = 500
    retryable = True  # whether an event or item is delivered again

    def __init__(self, message: str, *, status: int | None = None) -> None:
        if status is not None:
            self.status = status
        super().__init__(message)


class InvalidInput(FunctionError):
    """The payload failed ``@validate`` (or is not the JSON the function needs); never retried."""

    status = 422
    retryable = False


class RateLimited(FunctionError):
    """``@rate_limit`` refused the call. ``retry_after`` is seconds until a token is free."""

    status = 429

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class Overloaded(FunctionError):
    """The function already runs its ``concurrency`` invocations."""

    status = 429


class InProgress(FunctionError):
    """``@idempotent``: another invocation with the same key is running."""

    status = 409


class FunctionTimeout(FunctionError, PodkitTimeout):
    """``@timeout`` passed before the function returned."""

    status = 504
