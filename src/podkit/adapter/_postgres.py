"""PostgreSQL for the adapters, through asyncpg (the ``postgres`` extra), imported on first use.

Errors of the driver and of the server are translated to :class:`PostgresError` here, so the
health checks and the metrics adapter see one kind of failure with a readable reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from podkit.errors import ConfigError, PodkitError


class PostgresError(PodkitError):
    """The server could not be reached, refused the login or failed the query."""


def split_dsn(dsn: str, *, own: Sequence[str] = ("query",)) -> tuple[str, dict[str, str]]:
    """Take podkit's own parameters (``?query=...``) out of a ``postgresql://`` URL.

    Returns:
        The URL for the driver and podkit's parameters.

    Raises:
        ConfigError: the URL is not ``postgresql://`` or ``postgres://``.
    """
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname or parts.query):
        raise ConfigError(f"expected postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DB, got {dsn!r}")
    mine: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        (mine.__setitem__(key, value) if key in own else rest.append((key, value)))
    return urlunsplit(parts._replace(query=urlencode(rest))), mine


def _driver() -> Any:
    try:
        import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints
    except ImportError as exc:  # pragma: no cover - installed with the dev and postgres extras
        raise PodkitError(
            "PostgreSQL support needs asyncpg: pip install 'podkit[postgres]'"
        ) from exc
    return asyncpg


async def fetch(dsn: str, query: str, *, timeout: float) -> list[dict[str, Any]]:
    """Connect, run ``query`` and return its rows as dicts.

    Raises:
        PostgresError: connecting, logging in or the query failed.
    """
    (rows,) = await fetch_many(dsn, [query], timeout=timeout)
    return rows


async def fetch_many(
    dsn: str, queries: Sequence[str], *, timeout: float
) -> list[list[dict[str, Any]]]:
    """Connect once and run each query; the rows of each, as dicts.

    Raises:
        PostgresError: connecting, logging in or a query failed.
    """
    asyncpg = _driver()
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise PostgresError(_reason(exc)) from exc
    try:
        results = []
        for query in queries:
            rows = await conn.fetch(query, timeout=timeout)
            results.append([dict(row) for row in rows])
        return results
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise PostgresError(_reason(exc)) from exc
    finally:
        await conn.close(timeout=timeout)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
