"""What an HTTP function receives and what it may return."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from podkit.serving.functions._errors import InvalidInput

_EMPTY = object()
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_JSON_FIELDS = (b"Content-Type", b"application/json")

try:  # orjson is an optional accelerator (``podkit[fast]``): about ten times the stdlib's speed
    import orjson

    _orjson_dumps: Callable[[Any], bytes] | None = orjson.dumps
except ImportError:  # pragma: no cover - orjson is installed by the dev extra
    _orjson_dumps = None


def dump_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (what orjson writes when it is installed; the
    stdlib's encoder for what orjson refuses, such as integers over 64 bits).

    Raises:
        TypeError: the value is not JSON-serialisable.
    """
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(value)
        except TypeError:
            pass
    return _JSON_ENCODER.encode(value).encode()


class Headers(Mapping[str, str]):
    """Request fields by case-insensitive name (the first value of each)."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items: dict[str, str] = {}
        for name, value in items:
            self._items.setdefault(name.lower(), value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items


class FunctionRequest:
    """An HTTP request as a function sees it.

    Attributes:
        method: ``"POST"``...
        path: the path without the query string.
        headers: case-insensitive mapping of field values (``raw_headers``: the fields as
            the server received them, decoded on first use).
        query: query parameters (the first value of each name).
        body: the whole body.
        params: path parameters of the route (``{id}``).
        request_id: the ``X-Request-Id`` the server gave the request.
    """

    __slots__ = (
        "_headers",
        "_json",
        "_pairs",
        "_query",
        "_raw_headers",
        "body",
        "method",
        "params",
        "path",
        "query_string",
        "request_id",
    )

    def __init__(
        self,
        method: str,
        path: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        raw_headers: list[tuple[bytes, bytes]] | None = None,
        query: str = "",
        body: bytes = b"",
        params: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> None:
        self.method = method
        self.path = path
        # fields as received are decoded when a function first looks at them
        self._headers: Headers | None = None
        self._pairs = headers
        self._raw_headers = raw_headers or []
        self.query_string = query
        self._query: dict[str, str] | None = None  # parsed on first use
        self.body = body
        self.params = dict(params or {})
        self.request_id = request_id
        self._json: Any = _EMPTY

    @property
    def headers(self) -> Headers:
        """The request's fields by case-insensitive name."""
        if self._headers is None:
            self._headers = Headers(self._header_pairs())
        return self._headers

    @property
    def query(self) -> dict[str, str]:
        """Query parameters (the first value of each name)."""
        if self._query is None:
            parsed: dict[str, str] = {}
            if self.query_string:
                for name, value in parse_qsl(self.query_string, keep_blank_values=True):
                    parsed.setdefault(name, value)
            self._query = parsed
        return self._query

    @query.setter
    def query(self, value: dict[str, str]) -> None:
        self._query = dict(value)
        self.query_string = urlencode(self._query)

    def raw_fields(self) -> list[tuple[bytes, bytes]]:
        """The fields as byte pairs (as the server received them)."""
        if self._raw_headers or self._pairs is None:
            return self._raw_headers
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self._pairs]

    def _header_pairs(self) -> list[tuple[str, str]]:
        if self._pairs is None:
            self._pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._raw_headers]
        return self._pairs

    @property
    def json(self) -> Any:
        """The body parsed as JSON (None for an empty body).

        Raises:
            InvalidInput: the body is not JSON (an HTTP trigger answers 400).
        """
        if self._json is _EMPTY:
            if not self.body.strip():
                self._json = None
            else:
                try:
                    self._json = json.loads(self.body)
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise InvalidInput(f"the body is not JSON: {exc}", status=400) from exc
        return self._json

    @json.setter
    def json(self, value: Any) -> None:
        """Replace the parsed body (``@validate`` and ``@defaults`` do)."""
        self._json = value

    def to_json(self) -> dict[str, Any]:
        """A JSON form, for asynchronous calls that travel through the queue."""
        return {
            "method": self.method,
            "path": self.path,
            "headers": self._header_pairs(),
            "query": self.query,
            "body": self.body.decode("latin-1"),
            "params": self.params,
            "request_id": self.request_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FunctionRequest:
        request = cls(
            str(data["method"]),
            str(data["path"]),
            headers=[(str(k), str(v)) for k, v in data.get("headers", [])],
            body=str(data.get("body", "")).encode("latin-1"),
            params=data.get("params") or {},
            request_id=str(data.get("request_id", "")),
        )
        request.query = dict(data.get("query") or {})
        return request

    def __repr__(self) -> str:
        return f"<FunctionRequest {self.method} {self.path}>"


@dataclass(slots=True)
class FunctionResponse:
    """A response with a status and fields of the function's choosing.

    ``body`` is bytes, str (text/plain), or any other JSON value (application/json).
    """

    body: Any = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def encode_result(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """The status, fields and body bytes of what a function returned.

    Raises:
        InvalidInput: never; a result that is not JSON-serialisable raises ``TypeError``.
    """
    if isinstance(result, FunctionResponse):
        status, body, extra = result.status, result.body, dict(result.headers)
    else:
        status, body, extra = (204 if result is None else 200), result, {}
    headers: list[tuple[str, str]] = []
    if body is None:
        data = b""
    elif isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
        headers.append(("Content-Type", "application/octet-stream"))
    elif isinstance(body, str):
        data = body.encode()
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
    else:
        data = dump_json(body)
        headers.append(("Content-Type", "application/json"))
    lower = {k.lower() for k in extra}
    headers = [(k, v) for k, v in headers if k.lower() not in lower]
    headers.extend(extra.items())
    return status, headers, data


def encode_outcome(result: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """:func:`encode_result` with the fields as byte pairs, ready for the engine.

    Raises:
        TypeError: the result is not JSON-serialisable.
    """
    if type(result) is dict:  # the common answer, without the general bookkeeping
        return 200, [_JSON_FIELDS], dump_json(result)
    status, headers, data = encode_result(result)
    return status, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers], data
