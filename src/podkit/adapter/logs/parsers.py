"""Line parsers: one log line in, one structured :class:`LogEntry` out (sans-IO, no clock).

Theory of operation. Every parser is a callable ``parser(line) -> LogEntry | None`` that
returns ``None`` when the line is not in its format; :func:`parse_line` then keeps the line as
raw text, so no line is ever dropped for being unparseable. The formats:

* ``json`` — one JSON object per line; the timestamp, level and message are taken from the
  usual keys (``timestamp``/``ts``/``time``/``@timestamp``, ``level``/``severity``/``lvl``,
  ``message``/``msg``) and every other key goes to ``fields``;
* ``logfmt`` — ``key=value key="quoted value"`` pairs (the Heroku/Go convention), same keys;
* ``nginx`` and ``apache`` — the Common and Combined Log Formats (nginx's default
  ``combined``; Apache's ``common`` and ``combined``); the level follows the status
  (5xx error, 4xx warning, else info) and the time becomes ISO 8601;
* ``syslog`` — RFC 5424, RFC 3164 (with or without ``<PRI>``, as rsyslog writes files) and
  rsyslog's high-precision ISO form; the level follows the severity. RFC 3164 has no year,
  so the parser is given one (the caller passes the current year: parsers read no clock);
* ``python`` — the lines of Python's ``logging``: ``2026-12-07 03:00:00,123 ERROR app:
  text`` (``asctime``, ``levelname``, optional ``name`` and separators ``-``, ``:``,
  ``[LEVEL]``), ``asctime - name - LEVEL - text`` (the logging cookbook's) and
  ``basicConfig``'s ``LEVEL:name:text``; a record that starts with ``Traceback (most
  recent call last):`` (an uncaught exception) is an error whose message is the exception.

``auto`` tries the strict parser (json, access, syslog, python) that last matched first, then
the other strict ones, then logfmt, which accepts almost anything with a ``key=value`` in it.
Levels are normalised to ``debug``, ``info``, ``notice``, ``warning``, ``error`` and
``critical`` where the source uses a known synonym; unknown levels pass through lower-cased.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

FormatName = Literal["auto", "json", "logfmt", "nginx", "apache", "syslog", "python"]
FORMATS: Final[tuple[str, ...]] = (
    "auto",
    "json",
    "logfmt",
    "nginx",
    "apache",
    "syslog",
    "python",
)

MAX_LINE_CHARS = 1 << 20  # lines longer than 1 MiB are kept raw: no parser backtracks on them

_TIMESTAMP_KEYS: Final = ("timestamp", "ts", "time", "@timestamp", "datetime", "date")
_LEVEL_KEYS: Final = ("level", "severity", "lvl", "loglevel", "log.level", "levelname")
_MESSAGE_KEYS: Final = ("message", "msg", "text", "log")

_LEVELS: Final[dict[str, str]] = {
    "trace": "debug",
    "notset": "debug",
    "debug": "debug",
    "dbg": "debug",
    "info": "info",
    "information": "info",
    "informational": "info",
    "notice": "notice",
    "warn": "warning",
    "warning": "warning",
    "err": "error",
    "error": "error",
    "crit": "critical",
    "critical": "critical",
    "fatal": "critical",
    "panic": "critical",
    "alert": "critical",
    "emerg": "critical",
    "emergency": "critical",
}

# RFC 5424 section 6.2.1: severity 0-7.
_SYSLOG_SEVERITY: Final = (
    "critical",  # emergency
    "critical",  # alert
    "critical",  # critical
    "error",
    "warning",
    "notice",
    "info",
    "debug",
)

_MONTHS: Final[dict[str, str]] = {
    name: f"{i:02d}"
    for i, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}


@dataclass(slots=True)
class LogEntry:
    """One parsed line.

    Attributes:
        message: the human-readable text (for access logs, the request line).
        timestamp: ISO 8601 when the line carried a time, else None.
        level: normalised level, or None when the line had none.
        fields: everything else the line carried, by name.
        format: the parser that understood the line, or ``"raw"``.
    """

    message: str
    timestamp: str | None = None
    level: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    format: str = "raw"

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict (the schema shared by logship and the log adapter)."""
        return {
            "timestamp": self.timestamp,
            "level": self.level,
            "message": self.message,
            "fields": self.fields,
            "format": self.format,
        }


Parser = Callable[[str], LogEntry | None]


def normalise_level(value: object) -> str | None:
    """Map a level written any common way (``WARN``, ``err``, ``Fatal``) to podkit's names."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not text:
        return None
    return _LEVELS.get(text, text)


def _pick(data: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in data:
            return data.pop(key)
    return None


def _from_mapping(data: dict[str, Any], fmt: str, line: str) -> LogEntry:
    timestamp = _pick(data, _TIMESTAMP_KEYS)
    level = _pick(data, _LEVEL_KEYS)
    message = _pick(data, _MESSAGE_KEYS)
    return LogEntry(
        message=line if message is None else str(message),
        timestamp=None if timestamp is None else str(timestamp),
        level=normalise_level(level),
        fields=data,
        format=fmt,
    )


def parse_json(line: str) -> LogEntry | None:
    """A JSON object per line; anything else (arrays, scalars, broken JSON) is not JSON logs."""
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return _from_mapping(data, "json", line)


_UNESCAPE = re.compile(r"\\(.)")
_LOGFMT_PAIR = re.compile(r'\s*([^\s=]+)(?:=("(?:[^"\\]|\\.)*"|[^\s"]*))?')


def parse_logfmt(line: str) -> LogEntry | None:
    """``key=value`` pairs; a line with no ``=`` at all, or stray text, is not logfmt."""
    if "=" not in line:
        return None
    data: dict[str, Any] = {}
    pos = 0
    end = len(line.rstrip())
    pairs_with_value = 0
    while pos < end:
        match = _LOGFMT_PAIR.match(line, pos)
        if match is None or match.end() == pos:
            return None
        key, value = match.group(1), match.group(2)
        if match.end() < end and not line[match.end()].isspace():
            return None
        if value is None:
            data[key] = True
        else:
            pairs_with_value += 1
            if value.startswith('"'):
                value = _UNESCAPE.sub(r"\1", value[1:-1])
            data[key] = value
        pos = match.end()
    if pairs_with_value == 0:
        return None
    return _from_mapping(data, "logfmt", line)


_QUOTED = r'"([^"\\]*(?:\\.[^"\\]*)*)"'  # unrolled loop: fast, and allows \" escapes
# Common Log Format, optionally followed by the Combined fields and nginx's extra fields.
_ACCESS = re.compile(
    r"(\S+) (\S+) (\S+) \[([^\]]+)\] " + _QUOTED + r" (\d{3}) (\d+|-)"
    r"(?: " + _QUOTED + " " + _QUOTED + r")?(.*)"
)


ACCESS_PATTERN: Final = _ACCESS  # the fast path of the log adapter matches with it too


def access_time_to_iso(text: str) -> str:
    """``10/Oct/2000:13:55:36 -0700`` → ``2000-10-10T13:55:36-07:00`` (the text if not that)."""
    if len(text) != 26 or text[2] != "/" or text[20] != " ":
        return text
    month = _MONTHS.get(text[3:6])
    if month is None:
        return text
    zone = text[21:]
    return f"{text[7:11]}-{month}-{text[0:2]}T{text[12:20]}{zone[0:3]}:{zone[3:5]}"


def _status_level(status: int) -> str:
    if status >= 500:
        return "error"
    if status >= 400:
        return "warning"
    return "info"


def _access_parser(fmt: str) -> Parser:
    """An access-log parser labelling entries ``fmt``; ``"access"`` labels Combined lines
    ``nginx`` and Common ones ``apache``, which is what ``auto`` reports."""
    match_access = _ACCESS.match
    cache: dict[str, str] = {}

    def parse(line: str) -> LogEntry | None:
        match = match_access(line)
        if match is None:
            return None
        (remote, ident, user, when, request, status_text, size, referer, agent, extra) = (
            match.groups()
        )
        stamp = cache.get(when)
        if stamp is None:
            if len(cache) > 4096:  # one entry per distinct second: keep it small
                cache.clear()
            stamp = cache[when] = access_time_to_iso(when)
        status = int(status_text)
        fields: dict[str, Any] = {
            "remote_addr": remote,
            "status": status,
            "body_bytes_sent": 0 if size == "-" else int(size),
        }
        method, _, rest = request.partition(" ")
        if rest:
            fields["method"] = method
            path, _, protocol = rest.rpartition(" ")
            fields["path"] = path or rest
            if protocol:
                fields["protocol"] = protocol
        if user != "-":
            fields["remote_user"] = user
        if ident != "-":
            fields["ident"] = ident
        if referer is not None:
            if referer != "-":
                fields["referer"] = referer
            fields["user_agent"] = agent
        extra = extra.strip()
        if extra:
            fields["extra"] = extra
        label = fmt if fmt != "access" else ("nginx" if referer is not None else "apache")
        return LogEntry(request, stamp, _status_level(status), fields, label)

    return parse


parse_nginx: Parser = _access_parser("nginx")
parse_apache: Parser = _access_parser("apache")

_SYSLOG_5424 = re.compile(
    r"<(?P<pri>\d{1,3})>(?P<version>\d{1,2}) (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) "
    r"(?P<procid>\S+) (?P<msgid>\S+) (?P<sd>-|(?:\[(?:[^\]\\]|\\.)*\])+)(?: (?P<msg>.*))?$",
    re.DOTALL,
)
_SYSLOG_3164 = re.compile(
    r"(?:<(?P<pri>\d{1,3})>)?"
    r"(?:(?P<bsd>[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2})|(?P<iso>\d{4}-\d{2}-\d{2}T\S+)) "
    r"(?P<host>\S+) (?P<tag>[^:\[\s]+)(?:\[(?P<pid>[^\]]*)\])?: ?(?P<msg>.*)$",
    re.DOTALL,
)
_SD_PARAM = re.compile(r'(\S+?)="((?:[^"\\]|\\.)*)"')


def _sd_fields(sd: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for element in re.findall(r"\[((?:[^\]\\]|\\.)*)\]", sd):
        sd_id, _, params = element.partition(" ")
        for name, value in _SD_PARAM.findall(params):
            out[f"{sd_id}.{name}"] = value
    return out


def _pri(text: str | None, fields: dict[str, Any]) -> str | None:
    if text is None:
        return None
    pri = int(text)
    if pri > 191:
        return None
    fields["facility"] = pri >> 3
    return _SYSLOG_SEVERITY[pri & 7]


def syslog_parser(*, year: int) -> Parser:
    """A syslog parser; ``year`` completes RFC 3164 timestamps, which carry none."""

    def parse(line: str) -> LogEntry | None:
        if line.startswith("<"):
            match = _SYSLOG_5424.match(line)
            if match is not None:
                fields: dict[str, Any] = {}
                level = _pri(match["pri"], fields)
                for key in ("host", "app", "procid", "msgid"):
                    if match[key] != "-":
                        fields["hostname" if key == "host" else key] = match[key]
                if match["sd"] != "-":
                    fields.update(_sd_fields(match["sd"]))
                stamp = None if match["ts"] == "-" else match["ts"]
                message = (match["msg"] or "").removeprefix("\ufeff")
                return LogEntry(message, stamp, level, fields, "syslog")
        match = _SYSLOG_3164.match(line)
        if match is None:
            return None
        fields = {}
        level = _pri(match["pri"], fields)
        fields["hostname"] = match["host"]
        fields["app"] = match["tag"]
        if match["pid"] is not None:
            fields["procid"] = match["pid"]
        if match["iso"] is not None:
            stamp = match["iso"]
        else:
            bsd = match["bsd"]
            month = _MONTHS.get(bsd[0:3])
            if month is None:
                return None
            stamp = f"{year:04d}-{month}-{bsd[4:6].replace(' ', '0')}T{bsd[7:15]}"
        return LogEntry(match["msg"], stamp, level, fields, "syslog")

    return parse


_PY_LEVEL = r"(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL|NOTSET)"
_PY_TIME = r"(?P<ts>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[,.]\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?)"
# asctime LEVEL [name[pid]][:|-] message  (also [LEVEL] and " - " separators)
_PYTHON_LINE = re.compile(
    _PY_TIME + r"\s+(?:-\s+)?\[?" + _PY_LEVEL + r"\]?\s+(?:-\s+)?"
    r"(?:(?P<logger>[\w.\-]+)(?:\[(?P<pid>\d+)\])?(?::|\s+-)\s+)?(?P<msg>.*)$",
    re.DOTALL,
)
# asctime - name - LEVEL - message  (the logging cookbook's format)
_PYTHON_COOKBOOK = re.compile(
    _PY_TIME + r" - (?P<logger>[\w.\-]+) - " + _PY_LEVEL + r" - (?P<msg>.*)$", re.DOTALL
)
# LEVEL:name:message  (logging.basicConfig's default)
_PYTHON_BASIC = re.compile(_PY_LEVEL + r":(?P<logger>[^:\s]*):(?P<msg>.*)$", re.DOTALL)
TRACEBACK_START: Final = "Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<msg>.*))?$")


def exception_of(text: str) -> tuple[str, str] | None:
    """``(type, message)`` of the last exception in a Python traceback inside ``text``."""
    lines = text.splitlines()
    if not any(line.startswith(TRACEBACK_START) for line in lines):
        return None
    for line in reversed(lines):
        if not line or line[0].isspace():
            continue
        match = _EXCEPTION_LINE.match(line)
        if match is not None and not line.startswith(TRACEBACK_START):
            return match["type"], match["msg"] or ""
    return None


def parse_python(line: str) -> LogEntry | None:
    """A line (or joined record) of Python's ``logging``, or a bare traceback."""
    if line.startswith(TRACEBACK_START):
        found = exception_of(line)
        message = f"{found[0]}: {found[1]}" if found and found[1] else (found or ("",))[0]
        return LogEntry(message or line, None, "error", {}, "python")
    match = _PYTHON_LINE.match(line) or _PYTHON_COOKBOOK.match(line)
    if match is not None:
        fields: dict[str, Any] = {}
        if match["logger"]:
            fields["logger"] = match["logger"]
        if "pid" in match.groupdict() and match["pid"]:
            fields["pid"] = int(match["pid"])
        return LogEntry(
            match["msg"], match["ts"], normalise_level(match["level"]), fields, "python"
        )
    match = _PYTHON_BASIC.match(line)
    if match is not None:
        fields = {"logger": match["logger"]} if match["logger"] else {}
        return LogEntry(match["msg"], None, normalise_level(match["level"]), fields, "python")
    return None


def auto_parser(*, year: int) -> Parser:
    """Try the strict parser that matched last first (a file rarely changes format), then
    the other strict ones, and logfmt only when none of them matched.

    JSON, the access-log formats and syslog each have a shape of their own, so whichever
    matches is right. logfmt accepts nearly any text holding one ``key=value`` token (bare
    words are keys), which includes syslog messages with such a token and access lines with a
    query string: it stays the fallback, never the parser tried first, or one logfmt line in
    a mixed file would make it claim the lines of other formats that follow.
    """
    access, syslog = _access_parser("access"), syslog_parser(year=year)
    # Each strict parser with a cheap test its lines always pass (a necessary condition), so
    # that a logfmt file does not pay for three regular expressions on every line.
    strict: list[tuple[Parser, Callable[[str], bool]]] = [
        (parse_json, lambda line: line.startswith("{")),
        (access, lambda line: '] "' in line),
        (syslog, _may_be_syslog),
        (parse_python, _may_be_python),
    ]
    last = [strict[0]]

    def parse(line: str) -> LogEntry | None:
        entry = last[0][0](line)
        if entry is not None:
            return entry
        for candidate in strict:
            if candidate is last[0] or not candidate[1](line):
                continue
            entry = candidate[0](line)
            if entry is not None:
                last[0] = candidate
                return entry
        return parse_logfmt(line)

    return parse


def _may_be_syslog(line: str) -> bool:
    """``<PRI>``, a BSD timestamp (``Oct 11 ...``) or an ISO date: how syslog lines begin."""
    first = line[:1]
    return (
        first == "<"
        or (first.isupper() and line[3:4] == " ")
        or (line[:4].isdigit() and line[4:5] == "-")
    )


def _may_be_python(line: str) -> bool:
    """An ISO date, a level word and ``:`` (basicConfig) or a traceback: Python lines."""
    first = line[:1]
    return (line[:4].isdigit() and line[4:5] == "-") or (first.isupper() and ":" in line[:12])


def make_parser(name: str, *, year: int) -> Parser:
    """The parser for a ``--format`` name.

    Raises:
        ValueError: ``name`` is not one of :data:`FORMATS`.
    """
    if name == "auto":
        return auto_parser(year=year)
    if name == "json":
        return parse_json
    if name == "logfmt":
        return parse_logfmt
    if name == "nginx":
        return _access_parser("nginx")
    if name == "apache":
        return _access_parser("apache")
    if name == "syslog":
        return syslog_parser(year=year)
    if name == "python":
        return parse_python
    raise ValueError(f"unknown log format {name!r}: expected one of {', '.join(FORMATS)}")


def parse_line(line: str, parser: Parser) -> LogEntry:
    """Parse ``line`` (without its newline); a line no parser understands is kept as raw text."""
    if len(line) <= MAX_LINE_CHARS:
        entry = parser(line)
        if entry is not None:
            return entry
    return LogEntry(line)
