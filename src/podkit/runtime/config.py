"""Configuration values parsed once at the edge: durations, sizes, addresses and YAML models.

Durations are written ``500ms``, ``2s``, ``1m``, ``1h`` (a bare number means seconds); sizes are
written ``512``, ``64KiB``, ``256MiB``, ``1GiB`` (also ``KB``/``MB``/``GB`` as powers of 1000).
Every parse error is a :class:`~podkit.errors.ConfigError` naming the source and field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from podkit.errors import ConfigError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}


def parse_duration(text: str | float, *, field: str = "duration") -> float:
    """Parse ``500ms``, ``2s``, ``1.5m``, ``1h`` or a bare number of seconds.

    Returns:
        The duration in seconds.

    Raises:
        ConfigError: the text is not a non-negative duration.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"expected a non-negative duration, got {text!r}", path=field)
        return float(text)
    match = _DURATION_RE.match(str(text))
    if match is None:
        raise ConfigError(f"expected a duration such as 500ms, 2s or 1m, got {text!r}", path=field)
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(text: str | int, *, field: str = "size") -> int:
    """Parse ``512``, ``64KiB``, ``256MiB``, ``1GiB`` (binary) or ``10MB`` (decimal) into bytes.

    Raises:
        ConfigError: the text is not a non-negative size.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"expected a non-negative size, got {text!r}", path=field)
        return text
    match = _SIZE_RE.match(str(text))
    if match is None:
        raise ConfigError(f"expected a size such as 64KiB or 256MiB, got {text!r}", path=field)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def format_size(n: int) -> str:
    """The shortest exact way to write ``n`` bytes in podkit's size syntax (``32KiB``)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def format_duration(seconds: float) -> str:
    """The shortest exact way to write ``seconds`` in podkit's duration syntax."""
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class HostPort:
    """A ``HOST:PORT`` listen or connect address (IPv6 hosts in brackets: ``[::1]:8080``)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_hostport(
    text: str, *, field: str = "address", default_host: str | None = "127.0.0.1"
) -> HostPort:
    """Parse ``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (which binds ``default_host``).

    Args:
        default_host: the host of ``:PORT``; None makes ``:PORT`` an error (what the command
            line does: ``:8090`` means every interface to nginx and Go users, so the host is
            written out instead of guessed).

    Raises:
        ConfigError: the text has no valid port, or no host and no ``default_host``.
    """
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ConfigError(f"expected HOST:PORT, got {text!r}", path=field)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"expected a port number 0-65535 in {text!r}", path=field)
    if not host:
        if default_host is None:
            raise ConfigError(
                f"give the host too: 127.0.0.1:{port_text} (this machine only) or "
                f"0.0.0.0:{port_text} (every interface), not {text!r}",
                path=field,
            )
        host = default_host
    return HostPort(host, int(port_text))


M = TypeVar("M", bound=BaseModel)


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def validation_error_to_config_error(exc: ValidationError, *, source: str) -> ConfigError:
    """Turn a pydantic error into a :class:`ConfigError` naming the first bad field."""
    first = exc.errors()[0]
    path = _loc_to_path(tuple(first["loc"]))
    reason = str(first["msg"])
    if first["type"] == "extra_forbidden":
        reason = "unknown key"
    more = len(exc.errors()) - 1
    if more:
        reason += f" (and {more} more error{'s' if more > 1 else ''})"
    return ConfigError(reason, source=source, path=path)


def read_text_file(path: str | Path) -> str:
    """Read a UTF-8 text file a user named (a pod file, a template...).

    Raises:
        ConfigError: the file cannot be read or is not UTF-8 (naming the byte offset).
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", source=source) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"line {line}: not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r})",
            source=source,
        ) from exc


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file.

    Raises:
        ConfigError: the file cannot be read or is not valid YAML (with line and column).
    """
    source = str(path)
    text = read_text_file(path)
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{where}invalid YAML: {exc.problem}", source=source) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source) from exc


def load_model(model: type[M], path: str | Path) -> M:
    """Read a YAML file into a validated model.

    Raises:
        ConfigError: naming the file, the field path and what was expected.
    """
    data = load_yaml(path)
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise validation_error_to_config_error(exc, source=str(path)) from exc
