"""A small client for etcd's v3 JSON gateway: read a key or prefix, wait for it to change.

etcd (3.4 and later) serves its gRPC API as JSON over HTTP: ``POST /v3/kv/range`` reads and
``POST /v3/watch`` streams one JSON object per change. Keys and values travel base64-encoded;
a prefix is a range whose end is the prefix with its last byte incremented.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Final

import httpx

from podkit.errors import BackendError, BackendUnavailable

DEFAULT_ETCD_TIMEOUT: Final = 5.0  # a healthy single-member etcd answers in milliseconds
DEFAULT_WATCH_WAIT: Final = 60.0  # a watch is renewed this often, to notice a dead stream


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix`` (etcd's rule)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"  # every key


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    """The keys read and the store's revision when they were read."""

    revision: int
    kvs: tuple[KeyValue, ...]


class EtcdGateway:
    """Reads and watches keys through etcd's JSON gateway at ``endpoint`` (``http://h:p``).

    Raises (from every method):
        BackendUnavailable: etcd could not be reached or timed out.
        BackendError: etcd answered with an error.
    """

    def __init__(self, endpoint: str, *, timeout: float = DEFAULT_ETCD_TIMEOUT) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.endpoint, timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"etcd {self.endpoint}: {exc.__class__.__name__}") from exc
        if response.status_code != 200:
            raise BackendError(f"etcd {path}: {response.status_code} {response.text[:200]}")
        try:
            data: dict[str, Any] = response.json()
        except ValueError as exc:
            raise BackendError(f"etcd {path}: answer is not JSON") from exc
        return data

    async def get_range(self, key: bytes, *, prefix: bool = False) -> RangeResult:
        """Read ``key`` (or every key under it when ``prefix``)."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        data = await self._post("/v3/kv/range", body)
        kvs = tuple(
            KeyValue(
                base64.b64decode(kv["key"]),
                base64.b64decode(kv.get("value", "")),
                int(kv.get("mod_revision", 0)),
            )
            for kv in data.get("kvs", [])
        )
        return RangeResult(int(data["header"]["revision"]), kvs)

    async def put(self, key: bytes, value: bytes) -> int:
        """Write ``key``; returns the new revision."""
        data = await self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(data["header"]["revision"])

    async def wait_change(
        self,
        key: bytes,
        *,
        prefix: bool = False,
        after_revision: int,
        wait: float = DEFAULT_WATCH_WAIT,
    ) -> bool:
        """Wait until ``key`` (or the prefix) changes after ``after_revision``.

        Returns:
            True when a change happened (or the history was compacted past it, so a change
            may have happened), False when ``wait`` seconds passed without one.
        """
        request: dict[str, Any] = {
            "create_request": {"key": _b64(key), "start_revision": after_revision + 1}
        }
        if prefix:
            request["create_request"]["range_end"] = _b64(prefix_end(key))
        timeout = httpx.Timeout(self._client.timeout.connect, read=wait)
        try:
            async with self._client.stream(
                "POST", "/v3/watch", json=request, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    raise BackendError(f"etcd watch: {response.status_code}")
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result", {})
                    if result.get("events") or int(result.get("compact_revision", 0)) > 0:
                        return True
                    if result.get("canceled"):
                        return True
        except httpx.ReadTimeout:
            return False
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"etcd {self.endpoint}: {exc.__class__.__name__}") from exc
        except ValueError as exc:
            raise BackendError("etcd watch: answer is not JSON") from exc
        raise BackendUnavailable(f"etcd {self.endpoint}: watch stream ended")
