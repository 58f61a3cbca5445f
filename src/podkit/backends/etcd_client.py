"""A small etcd v3 client over etcd's JSON gateway (HTTP/1.1), on httpx.

etcd serves every gRPC method of its v3 API as ``POST /v3/<service>/<method>`` with a JSON
body (keys and values base64-encoded, 64-bit numbers as strings); streaming methods (watch,
lease keep-alive) answer with one JSON object per line. This client covers what podkit uses:
ranges, puts, deletes, transactions, leases and watches.

Every transport failure becomes :class:`BackendUnavailable`; an error answered by etcd becomes
:class:`BackendError` (or :class:`BackendUnavailable` for gRPC ``UNAVAILABLE`` and
``DEADLINE_EXCEEDED``), with etcd's message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from podkit.errors import BackendError, BackendUnavailable

DEFAULT_TIMEOUT = 5.0  # etcd answers in milliseconds; callers cut requests shorter if needed
CONNECT_TIMEOUT = 1.0  # loopback or LAN
_GRPC_UNAVAILABLE = (4, 14)  # DEADLINE_EXCEEDED, UNAVAILABLE: try again later
_GRPC_NOT_FOUND = 5

SortTarget = Literal["KEY", "VERSION", "CREATE", "MOD", "VALUE"]
SortOrder = Literal["NONE", "ASCEND", "DESCEND"]


class EtcdError(BackendError):
    """etcd answered with an error; ``code`` is its gRPC status code."""

    def __init__(self, message: str, *, code: int = 0) -> None:
        self.code = code
        super().__init__(message)


class EtcdUnavailable(EtcdError, BackendUnavailable):
    """etcd answered that it cannot serve the request now (no leader, deadline exceeded)."""


def b64(data: bytes | str) -> str:
    """Base64 of ``data`` (UTF-8 for text), as the gateway expects keys and values."""
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def prefix_end(prefix: bytes | str) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    raw = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\x00"  # every key


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyValue:
        return cls(
            key=base64.b64decode(data.get("key", "")),
            value=base64.b64decode(data.get("value", "")),
            create_revision=int(data.get("create_revision", 0)),
            mod_revision=int(data.get("mod_revision", 0)),
            version=int(data.get("version", 0)),
            lease=int(data.get("lease", 0)),
        )


@dataclass(frozen=True, slots=True)
class RangeResult:
    """The keys of a range and the store revision it was read at."""

    kvs: list[KeyValue]
    revision: int
    count: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change to a watched key: ``type`` is ``"PUT"`` or ``"DELETE"``."""

    type: str
    kv: KeyValue
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Whether the comparisons held, and the raw responses of the branch that ran."""

    succeeded: bool
    revision: int
    responses: list[dict[str, Any]] = field(default_factory=list)


class EtcdClient:
    """An etcd v3 client for one endpoint (``http://host:port``).

    Args:
        endpoint: the client URL of an etcd member.
        timeout: the default deadline of one request, in seconds.
    """

    def __init__(self, endpoint: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.endpoint,
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(max_keepalive_connections=4),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one request to the gateway and return its decoded answer.

        Raises:
            BackendUnavailable: etcd could not be reached or is unavailable.
            BackendError: etcd answered with an error.
        """
        try:
            response = await self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"etcd {self.endpoint}: {type(exc).__name__}: {exc}") from exc
        return self._decode(response.status_code, response.content)

    def _decode(self, status: int, content: bytes) -> dict[str, Any]:
        try:
            data = json.loads(content) if content else {}
        except ValueError as exc:
            raise BackendError(f"etcd {self.endpoint}: answer is not JSON ({status})") from exc
        if not isinstance(data, dict):
            raise BackendError(f"etcd {self.endpoint}: unexpected answer {content[:200]!r}")
        if "error" in data and isinstance(data["error"], dict):  # streaming methods
            data = data["error"]
        if status != 200 or ("code" in data and "message" in data):
            code = int(data.get("code", 0))
            message = data.get("message") or data.get("error") or f"HTTP {status}"
            error_type = EtcdUnavailable if code in _GRPC_UNAVAILABLE else EtcdError
            raise error_type(f"etcd {self.endpoint}: {message}", code=code)
        result = data.get("result", data)
        return result if isinstance(result, dict) else {}

    # -- key-value -----------------------------------------------------------------------

    async def range(
        self,
        key: bytes | str,
        range_end: bytes | str | None = None,
        *,
        limit: int = 0,
        sort_target: SortTarget = "KEY",
        sort_order: SortOrder = "NONE",
        revision: int = 0,
    ) -> RangeResult:
        """Read ``key`` (or ``[key, range_end)``)."""
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if limit:
            body["limit"] = str(limit)
        if sort_order != "NONE":
            body["sort_order"] = sort_order
            body["sort_target"] = sort_target
        if revision:
            body["revision"] = str(revision)
        data = await self.call("/v3/kv/range", body)
        return RangeResult(
            kvs=[KeyValue.from_json(kv) for kv in data.get("kvs", [])],
            revision=int(data.get("header", {}).get("revision", 0)),
            count=int(data.get("count", 0)),
        )

    async def get(self, key: bytes | str) -> KeyValue | None:
        """The key, or None when it does not exist."""
        result = await self.range(key)
        return result.kvs[0] if result.kvs else None

    async def put(self, key: bytes | str, value: bytes | str, *, lease: int = 0) -> int:
        """Write ``key``; returns the store revision of the write."""
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = await self.call("/v3/kv/put", body)
        return int(data.get("header", {}).get("revision", 0))

    async def delete(self, key: bytes | str, range_end: bytes | str | None = None) -> int:
        """Delete ``key`` (or a range); returns how many keys were deleted."""
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        data = await self.call("/v3/kv/deleterange", body)
        return int(data.get("deleted", 0))

    async def txn(
        self,
        compare: Sequence[dict[str, Any]],
        success: Sequence[dict[str, Any]],
        failure: Sequence[dict[str, Any]] = (),
    ) -> TxnResult:
        """Run a transaction; build its parts with :func:`compare_create_revision`,
        :func:`request_put`, :func:`request_range`, :func:`request_delete`."""
        data = await self.call(
            "/v3/kv/txn",
            {"compare": list(compare), "success": list(success), "failure": list(failure)},
        )
        return TxnResult(
            succeeded=bool(data.get("succeeded", False)),
            revision=int(data.get("header", {}).get("revision", 0)),
            responses=list(data.get("responses", [])),
        )

    # -- leases --------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of ``ttl`` whole seconds; returns ``(lease id, granted ttl)``."""
        data = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(data["ID"]), int(data.get("TTL", ttl))

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns its new ttl, or 0 when it has expired or is unknown."""
        data = await self.call("/v3/lease/keepalive", {"ID": str(lease_id)})
        return int(data.get("TTL", 0))

    async def lease_time_to_live(self, lease_id: int) -> int:
        """Seconds left on a lease (rounded down by etcd); -1 when it has expired."""
        data = await self.call("/v3/lease/timetolive", {"ID": str(lease_id)})
        return int(data.get("TTL", -1))

    async def lease_revoke(self, lease_id: int) -> bool:
        """Revoke a lease and delete its keys; False when it did not exist any more."""
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease_id)})
        except EtcdError as exc:
            if exc.code == _GRPC_NOT_FOUND:
                return False
            raise
        return True

    # -- watch ---------------------------------------------------------------------------

    async def watch(
        self,
        key: bytes | str,
        range_end: bytes | str | None = None,
        *,
        start_revision: int = 0,
        prev_kv: bool = False,
    ) -> AsyncGenerator[list[WatchEvent], None]:
        """Yield the events on ``key`` (or a range) as they happen, batch by batch.

        The stream runs until the caller stops iterating (close the generator, or cancel the
        task, to end it). ``start_revision`` replays history from that revision.

        Raises:
            BackendUnavailable: the connection failed or etcd cancelled the watch (e.g. the
                revision was compacted).
        """
        create: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            create["range_end"] = b64(range_end)
        if start_revision:
            create["start_revision"] = str(start_revision)
        if prev_kv:
            create["prev_kv"] = True
        request = {"create_request": create}
        try:
            async with self._http.stream(
                "POST", "/v3/watch", json=request, timeout=httpx.Timeout(None, connect=1.0)
            ) as response:
                if response.status_code != 200:
                    content = await response.aread()
                    self._decode(response.status_code, content)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    result = self._decode(200, line.encode())
                    if result.get("canceled"):
                        reason = result.get("cancel_reason", "watch cancelled")
                        raise BackendUnavailable(f"etcd {self.endpoint}: {reason}")
                    events = [
                        WatchEvent(
                            type=event.get("type", "PUT"),
                            kv=KeyValue.from_json(event.get("kv", {})),
                            prev_kv=(
                                KeyValue.from_json(event["prev_kv"]) if "prev_kv" in event else None
                            ),
                        )
                        for event in result.get("events", [])
                    ]
                    if events:
                        yield events
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"etcd {self.endpoint}: {type(exc).__name__}: {exc}") from exc


def compare_create_revision(
    key: bytes | str, revision: int, result: Literal["EQUAL", "GREATER", "LESS"] = "EQUAL"
) -> dict[str, Any]:
    """A transaction comparison on a key's create revision (0 means "does not exist")."""
    return {
        "key": b64(key),
        "target": "CREATE",
        "result": result,
        "create_revision": str(revision),
    }


def request_put(key: bytes | str, value: bytes | str, *, lease: int = 0) -> dict[str, Any]:
    """A put inside a transaction."""
    put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def request_range(key: bytes | str) -> dict[str, Any]:
    """A read of one key inside a transaction."""
    return {"request_range": {"key": b64(key)}}


def request_delete(key: bytes | str) -> dict[str, Any]:
    """A delete of one key inside a transaction."""
    return {"request_delete_range": {"key": b64(key)}}
