"""One structured record per log record: the OpenTelemetry log data model or Elastic Common
Schema (sans-IO: the observed time and the source's zone are passed in).

Theory of operation. A parsed :class:`~podkit.adapter.logs.parsers.LogEntry` (plus the lines
joined to it) becomes:

* ``otel`` — the OpenTelemetry Logs Data Model (opentelemetry.io/docs/specs/otel/logs/
  data-model): ``Timestamp`` (when the source says; absent otherwise), ``ObservedTimestamp``,
  ``SeverityText`` and ``SeverityNumber`` (1-24: TRACE 1, DEBUG 5, INFO 9, WARN 13, ERROR 17,
  FATAL 21; 0 when the source has no level), ``Body``, ``Attributes`` and ``Resource``.
  Attribute names follow the OpenTelemetry semantic conventions where one fits
  (``http.request.method``, ``url.path``, ``http.response.status_code``,
  ``client.address``, ``user_agent.original``, ``exception.type``...; ``host.name`` and
  ``service.name`` go to the Resource); the rest keep their names.
* ``ecs`` — Elastic Common Schema 8: ``@timestamp`` (the source's time, else the observed
  one), ``ecs.version``, ``message``, ``log.level``, ``event.created``, and the ECS field of
  each value (``http.request.method``, ``source.address``, ``error.stack_trace``...); values
  ECS has no field for go to ``labels`` (as strings).

Timestamps are RFC 3339 in UTC (``2000-10-10T20:55:36Z``): a source time with a zone is
converted from it, one without (RFC 3164 syslog, Python's ``asctime``) is read in the zone
the caller names. A record no parser understood is kept whole as the Body (ECS ``message``)
with the attribute ``podkit.parse_error`` (ECS: ``error.message`` and the tag
``_parse_failure``), never dropped.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Mapping
from typing import Any, Final, Literal

from podkit.adapter.logs.parsers import LogEntry, exception_of

SchemaName = Literal["otel", "ecs"]
SCHEMAS: Final = ("otel", "ecs")
ECS_VERSION: Final = "8.11.0"
PARSE_ERROR: Final = "no parser understood the record"

# podkit level -> (SeverityText, SeverityNumber) of the OpenTelemetry data model.
SEVERITIES: Final[dict[str, tuple[str, int]]] = {
    "trace": ("TRACE", 1),
    "debug": ("DEBUG", 5),
    "info": ("INFO", 9),
    "notice": ("INFO2", 10),
    "warning": ("WARN", 13),
    "error": ("ERROR", 17),
    "critical": ("FATAL", 21),
}
OTEL_REQUIRED: Final = ("ObservedTimestamp", "SeverityNumber", "Body", "Attributes", "Resource")
ECS_REQUIRED: Final = ("@timestamp", "ecs", "message")

# field -> OpenTelemetry attribute, ECS field (dotted)
_FIELD_NAMES: Final[dict[str, tuple[str, str]]] = {
    "remote_addr": ("client.address", "source.address"),
    "method": ("http.request.method", "http.request.method"),
    "status": ("http.response.status_code", "http.response.status_code"),
    "body_bytes_sent": ("http.response.body.size", "http.response.body.bytes"),
    "referer": ("http.request.header.referer", "http.request.referrer"),
    "user_agent": ("user_agent.original", "user_agent.original"),
    "remote_user": ("user.name", "user.name"),
    "logger": ("code.namespace", "log.logger"),
    "pid": ("process.pid", "process.pid"),
    "procid": ("process.pid", "process.pid"),
    "facility": ("syslog.facility", "log.syslog.facility.code"),
    "msgid": ("syslog.msgid", "log.syslog.msgid"),
}
# fields that describe the source, not the event: the OpenTelemetry Resource
_RESOURCE_FIELDS: Final[dict[str, tuple[str, str]]] = {
    "hostname": ("host.name", "host.hostname"),
    "app": ("service.name", "service.name"),
}


def rfc3339(epoch: float) -> str:
    """Unix time as RFC 3339 UTC with milliseconds (``2026-12-07T03:00:00.123Z``)."""
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


_UTC_CACHE_SIZE: Final = 4096  # distinct source times remembered: one per second of logs
_utc_cache: dict[tuple[object, datetime.tzinfo], str | None] = {}


def to_utc(text: object, zone: datetime.tzinfo) -> str | None:
    """An RFC 3339 UTC time from a source timestamp, or None when it is not one.

    Naive times are read in ``zone``; numbers are Unix time in seconds (or milliseconds,
    microseconds, nanoseconds, by their size). Results are remembered: a log repeats the
    same second many times.
    """
    key = (text, zone)
    try:
        return _utc_cache[key]
    except (KeyError, TypeError):
        pass
    found = _to_utc(text, zone)
    if len(_utc_cache) >= _UTC_CACHE_SIZE:
        _utc_cache.clear()
    with contextlib.suppress(TypeError):  # an unhashable value (a JSON list) is not cached
        _utc_cache[key] = found
    return found


def _to_utc(text: object, zone: datetime.tzinfo) -> str | None:
    if text is None or isinstance(text, bool):
        return None
    moment: datetime.datetime
    if isinstance(text, int | float) or (isinstance(text, str) and _is_number(text)):
        value = float(text)
        while abs(value) > 1e11:  # ms, us, ns since the epoch
            value /= 1000
        try:
            moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
        except (OverflowError, OSError, ValueError):
            return None
    elif isinstance(text, str):
        try:
            moment = datetime.datetime.fromisoformat(text.strip())
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
    else:
        return None
    utc = moment.astimezone(datetime.UTC)
    if utc.microsecond:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0") + "Z"
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# field -> where it goes: (OpenTelemetry: "a" attribute / "r" resource, name), ECS path
_SPECIAL: Final = frozenset(("path", "protocol"))
_OTEL: Final[dict[str, tuple[bool, str]]] = {
    **{key: (False, names[0]) for key, names in _FIELD_NAMES.items()},
    **{key: (True, names[0]) for key, names in _RESOURCE_FIELDS.items()},
}
_ECS: Final[dict[str, tuple[str, ...]]] = {
    **{key: tuple(names[1].split(".")) for key, names in _FIELD_NAMES.items()},
    **{key: tuple(names[1].split(".")) for key, names in _RESOURCE_FIELDS.items()},
}


_ACCESS_FORMATS: Final = frozenset(("nginx", "apache"))
# Access-log fields whose attribute is always set (the parser always gives them).
_ACCESS_ALWAYS: Final = (
    ("remote_addr", "client.address"),
    ("status", "http.response.status_code"),
    ("body_bytes_sent", "http.response.body.size"),
)
_ACCESS_OPTIONAL: Final = (
    ("method", "http.request.method"),
    ("remote_user", "user.name"),
    ("referer", "http.request.header.referer"),
    ("user_agent", "user_agent.original"),
    ("ident", "ident"),
    ("extra", "extra"),
)


def _access_attributes(fields: dict[str, Any], attrs: dict[str, Any]) -> None:
    """The attributes of an access-log entry: the fields are known, so no search (the hot
    path of ``podkit adapt logs --format nginx``)."""
    for key, name in _ACCESS_ALWAYS:
        attrs[name] = fields[key]
    get = fields.get
    for key, name in _ACCESS_OPTIONAL:
        value = get(key)
        if value is not None:
            attrs[name] = value
    path = get("path")
    if path is not None:
        url_path, sep, query = path.partition("?")
        attrs["url.path"] = url_path
        if sep:
            attrs["url.query"] = query
        protocol = get("protocol")
        if protocol is not None and "/" in protocol:
            name, _, version = protocol.partition("/")
            attrs["network.protocol.name"] = name.lower()
            attrs["network.protocol.version"] = version


def to_otel(
    entry: LogEntry,
    *,
    observed: str,
    zone: datetime.tzinfo,
    rest: list[str] | None = None,
    resource: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record in the OpenTelemetry log data model.

    Args:
        entry: the parsed first line (``format == "raw"`` when nothing understood it).
        observed: when the adapter read it (RFC 3339 UTC).
        zone: the zone of source times that carry none.
        rest: the lines joined to the first one.
        resource: fixed Resource attributes (``service.name``...).
        attributes: fixed attributes (``log.file.path``...).
    """
    attrs: dict[str, Any] = dict(attributes) if attributes else {}
    res: dict[str, Any] = dict(resource) if resource else {}
    fmt = entry.format
    if fmt != "raw":
        attrs["log.format"] = fmt
    fields = entry.fields
    if fmt in _ACCESS_FORMATS:
        _access_attributes(fields, attrs)
    elif fields:
        names = _OTEL
        for key, value in fields.items():
            where = names.get(key)
            if where is None:
                if key not in _SPECIAL:
                    attrs[key] = value
            elif where[0]:
                res.setdefault(where[1], value)
            elif where[1] == "process.pid" and isinstance(value, str) and value.isdigit():
                attrs["process.pid"] = int(value)
            else:
                attrs[where[1]] = value
        path = fields.get("path")
        if path is not None:
            url_path, sep, query = str(path).partition("?")
            attrs["url.path"] = url_path
            if sep:
                attrs["url.query"] = query
            protocol = fields.get("protocol")
            if isinstance(protocol, str) and "/" in protocol:
                name, _, version = protocol.partition("/")
                attrs["network.protocol.name"] = name.lower()
                attrs["network.protocol.version"] = version
    body = "\n".join([entry.message, *rest]) if rest else entry.message
    if rest or fmt == "python":
        exception = exception_of(body)
        if exception is not None:
            attrs["exception.type"], attrs["exception.message"] = exception
            attrs["exception.stacktrace"] = "\n".join(rest) if rest else body
    record: dict[str, Any] = {}
    stamp = entry.timestamp
    if stamp is not None:
        utc = to_utc(stamp, zone)
        if utc is not None:
            record["Timestamp"] = utc
        else:
            attrs["podkit.timestamp_unparsed"] = stamp
    record["ObservedTimestamp"] = observed
    level = entry.level
    if level is not None:
        text, number = SEVERITIES.get(level) or (level.upper(), 0)
        record["SeverityText"] = text
        record["SeverityNumber"] = number
    else:
        record["SeverityNumber"] = 0
    record["Body"] = body
    if fmt == "raw":
        attrs["podkit.parse_error"] = PARSE_ERROR
    record["Attributes"] = attrs
    record["Resource"] = res
    return record


def put(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set ``doc[path[0]][path[1]]... = value``, making the objects on the way."""
    node = doc
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    put(doc, tuple(dotted.split(".")), value)


def _label(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def to_ecs(
    entry: LogEntry,
    *,
    observed: str,
    zone: datetime.tzinfo,
    rest: list[str] | None = None,
    resource: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record in Elastic Common Schema (arguments as :func:`to_otel`)."""
    body = "\n".join([entry.message, *rest]) if rest else entry.message
    stamp = to_utc(entry.timestamp, zone) if entry.timestamp is not None else None
    doc: dict[str, Any] = {"@timestamp": stamp or observed, "ecs": {"version": ECS_VERSION}}
    doc["message"] = body
    log: dict[str, Any] = {}
    doc["log"] = log
    if entry.level is not None:
        log["level"] = entry.level
    doc["event"] = {"created": observed}
    if resource:
        for name, text in resource.items():
            _set(doc, name, text)
    if attributes:
        for name, fixed in attributes.items():
            _set(doc, name, fixed)
    labels: dict[str, str] = {}
    fields = entry.fields
    if fields:
        paths = _ECS
        for key, value in fields.items():
            path = paths.get(key)
            if path is not None:
                if path[-1] == "pid" and isinstance(value, str) and value.isdigit():
                    value = int(value)
                put(doc, path, value)
            elif key not in _SPECIAL:
                labels[key.replace(".", "_")] = _label(value)
        url = fields.get("path")
        if url is not None:
            url_path, sep, query = str(url).partition("?")
            doc["url"] = {"path": url_path, "query": query} if sep else {"path": url_path}
        protocol = fields.get("protocol")
        if isinstance(protocol, str) and "/" in protocol:
            put(doc, ("http", "version"), protocol.partition("/")[2])
    fmt = entry.format
    if fmt != "raw":
        labels["log_format"] = fmt
    if rest or fmt == "python":
        exception = exception_of(body)
        if exception is not None:
            doc["error"] = {
                "type": exception[0],
                "message": exception[1],
                "stack_trace": "\n".join(rest) if rest else body,
            }
    if stamp is None and entry.timestamp is not None:
        labels["timestamp_unparsed"] = str(entry.timestamp)
    if fmt == "raw":
        doc["error"] = {"type": "parse_error", "message": PARSE_ERROR}
        doc["tags"] = ["_parse_failure"]
        put(doc, ("event", "original"), body)
    if labels:
        doc["labels"] = labels
    return doc


def missing_fields(record: Mapping[str, Any], schema: SchemaName) -> list[str]:
    """The required fields ``record`` lacks (empty when it is valid), with type checks:
    OpenTelemetry ``SeverityNumber`` in 0-24, times RFC 3339 UTC; ECS ``ecs.version``."""
    problems: list[str] = []
    if schema == "otel":
        problems += [name for name in OTEL_REQUIRED if name not in record]
        number = record.get("SeverityNumber")
        if not isinstance(number, int) or not 0 <= number <= 24:
            problems.append("SeverityNumber in 0-24")
        for name in ("Timestamp", "ObservedTimestamp"):
            if name in record and not _is_rfc3339_utc(record[name]):
                problems.append(f"{name} as RFC 3339 UTC")
        if not isinstance(record.get("Body"), str):
            problems.append("Body as a string")
        for name in ("Attributes", "Resource"):
            if not isinstance(record.get(name), dict):
                problems.append(f"{name} as a map")
    else:
        problems += [name for name in ECS_REQUIRED if name not in record]
        if not isinstance(record.get("ecs"), dict) or "version" not in record["ecs"]:
            problems.append("ecs.version")
        if not _is_rfc3339_utc(record.get("@timestamp")):
            problems.append("@timestamp as RFC 3339 UTC")
    return problems


def _is_rfc3339_utc(value: object) -> bool:
    if not isinstance(value, str) or not value.endswith("Z"):
        return False
    try:
        datetime.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True
