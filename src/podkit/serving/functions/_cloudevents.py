"""CloudEvents 1.0 (https://github.com/cloudevents/spec): the envelope of every event.

Events travel through the work queue in the structured JSON format of the spec: the
attributes and ``data`` in one JSON object. A subscription matches on attributes only
(exact values), as CloudEvents' ``exact`` filter dialect does.
"""

from __future__ import annotations

import datetime
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podkit.errors import UsageError

SPEC_VERSION = "1.0"
DEFAULT_SOURCE = "podkit/functions"
# Extension attribute names: lower-case letters and digits (CloudEvents 1.0, section 3.1.1).
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_CORE = ("specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data")


def new_event_id() -> str:
    """A unique event id (32 hex digits)."""
    return secrets.token_hex(16)


def _now_iso(now: float) -> str:
    moment = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp.

    Raises:
        UsageError: not an RFC 3339 timestamp.
    """
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise UsageError(f"event time is not RFC 3339: {value!r}") from exc


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """One event: its attributes and ``data`` (any JSON value).

    Attributes:
        type: what happened, e.g. ``user.created``.
        source: who says so (a URI reference).
        id: unique with ``source``; a duplicate delivery carries the same id.
        time: when it happened (RFC 3339).
        data: the payload.
        subject: what it is about, optional.
        extensions: extension attributes (lower-case names), e.g. ``sequence``.
    """

    type: str
    source: str
    id: str
    time: str
    data: Any = None
    subject: str | None = None
    datacontenttype: str = "application/json"
    extensions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        type: str,
        data: Any = None,
        *,
        now: float,
        source: str = DEFAULT_SOURCE,
        subject: str | None = None,
        id: str | None = None,
        extensions: Mapping[str, str] | None = None,
    ) -> CloudEvent:
        """A new event of ``type`` that happened at ``now``.

        Raises:
            UsageError: an empty type or source, or an invalid extension name.
        """
        if not type or not source:
            raise UsageError("an event needs a type and a source")
        for name in extensions or {}:
            if not _EXTENSION_NAME.match(name) or name in _CORE:
                raise UsageError(
                    f"event extension names are 1-20 lower-case letters or digits: {name!r}"
                )
        return cls(
            type=type,
            source=source,
            id=id or new_event_id(),
            time=_now_iso(now),
            data=data,
            subject=subject,
            extensions=dict(extensions or {}),
        )

    @property
    def timestamp(self) -> float:
        """``time`` in seconds since the epoch."""
        return parse_time(self.time)

    def attribute(self, name: str) -> str | None:
        """The value of attribute ``name`` (core or extension), None when absent."""
        if name in ("type", "source", "id", "time", "subject", "datacontenttype"):
            value = getattr(self, name)
            return None if value is None else str(value)
        if name == "specversion":
            return SPEC_VERSION
        return self.extensions.get(name)

    def to_json(self) -> dict[str, Any]:
        """The structured JSON form."""
        body: dict[str, Any] = {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
            "datacontenttype": self.datacontenttype,
            "data": self.data,
        }
        if self.subject is not None:
            body["subject"] = self.subject
        body.update(self.extensions)
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> CloudEvent:
        """Parse the structured JSON form.

        Raises:
            UsageError: a required attribute is missing or the spec version is not 1.0.
        """
        if body.get("specversion") != SPEC_VERSION:
            raise UsageError(f"specversion must be {SPEC_VERSION}")
        for name in ("id", "source", "type"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise UsageError(f"event attribute {name!r} is required (a string)")
        extensions = {
            k: str(v) for k, v in body.items() if k not in _CORE and _EXTENSION_NAME.match(k)
        }
        return cls(
            type=body["type"],
            source=body["source"],
            id=body["id"],
            time=str(body.get("time") or _now_iso(0)),
            data=body.get("data"),
            subject=body.get("subject"),
            datacontenttype=str(body.get("datacontenttype") or "application/json"),
            extensions=extensions,
        )

    def matches(self, filters: Mapping[str, str]) -> bool:
        """Whether every attribute named in ``filters`` has exactly that value."""
        return all(self.attribute(name) == value for name, value in filters.items())
