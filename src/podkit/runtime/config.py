"""Configuration values parsed once at the edge: durations, sizes, addresses and YAML models.

Durations are written ``500ms``, ``2s``, ``1m``, ``1h`` (a bare number means seconds); sizes are
written ``512``, ``64KiB``, ``256MiB``, ``1GiB`` (also ``KB``/``MB``/``GB`` as powers of 1000).
Every parse error is a :class:`~podkit.errors.ConfigError` naming the source and field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from podkit.errors import ConfigError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*(?:\.\d+)?)\s*(ms|s|m|h)\s*$")

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


def parse_rate(text: str, *, field: str = "rate") -> float:
    """Parse ``10/s``, ``100/m`` or ``5/10s`` (events per period).

    Returns:
        Events per second (more than 0).

    Raises:
        ConfigError: the text is not a positive rate.
    """
    match = _RATE_RE.match(text)
    if match is None:
        raise ConfigError(f"expected a rate such as 10/s, 100/m or 5/10s, got {text!r}", path=field)
    count = float(match.group(1))
    per = float(match.group(2) or 1) * _DURATION_UNITS[match.group(3)]
    if count <= 0 or per <= 0:
        raise ConfigError(f"expected a positive rate, got {text!r}", path=field)
    return count / per


def format_rate(per_second: float) -> str:
    """``per_second`` in the rate syntax (``500/s``; ``30/m`` below one per second)."""
    if per_second >= 1 or per_second <= 0:
        return f"{per_second:g}/s"
    return f"{per_second * 60:g}/m"


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


# The names pydantic gives the members of a union in an error's location ("str",
# "list[union[str,int]]", or a model's class name, which the caller names in ``words``): not
# keys of the file, so they are left out of the path.
_UNION_TAG_RE = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\])$")
_ALTERNATIVES = {
    "str": "a string",
    "int": "a number",
    "float": "a number",
    "bool": "true or false",
    "none": "null",
}


def _kind(value: Any) -> str:
    """How a YAML value reads to a person: 'a list', 'a mapping', 'the string \'x\''."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    return repr(value)


def _alternative(tag: str) -> str:
    if tag in _ALTERNATIVES:
        return _ALTERNATIVES[tag]
    if tag.startswith("list["):
        return "a list"
    if tag.startswith("dict["):
        return "a mapping"
    return f"a mapping ({tag})"


def _reason(error: Any, words: Mapping[str, str]) -> str:
    """One pydantic error in podkit's words: what was expected, and what the file has."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = _kind(error.get("input"))
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key missing"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping (key: value), got {got}"
    if kind in ("list_type", "tuple_type", "set_type"):
        return f"expected a list, got {got}"
    if kind == "string_type":
        return f"expected a string, got {got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {got}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}, got {got}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        bound, key = bounds[kind]
        return f"must be {bound} {ctx.get(key)}, got {got}"
    if kind == "too_short":
        n = ctx.get("min_length")
        return f"needs at least {n} item{'s' if n != 1 else ''}"
    if kind == "too_long":
        n = ctx.get("max_length")
        return f"takes at most {n} item{'s' if n != 1 else ''}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return f"expected {words.get(pattern, f'text matching {pattern}')}, got {got}"
    if kind == "string_too_long":
        return f"takes at most {ctx.get('max_length')} characters, got {got}"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return message.replace("Input should be", "expected")


def validation_error_to_config_error(
    exc: ValidationError, *, source: str, words: Mapping[str, str] | None = None
) -> ConfigError:
    """Turn a pydantic error into a :class:`ConfigError` naming the first bad field.

    The reason is in podkit's words ("expected a whole number, got the string 'many'"), never
    the validation library's. A value that fits none of a union's members is one error listing
    what would fit.

    Args:
        words: how to describe a regular expression a field must match ("a lowercase DNS
            label") or a model that is a member of a union ("a discovery reference").
    """
    words = words or {}
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    key_error = bool(loc) and loc[-1] == "[key]"
    if key_error:
        loc = loc[:-1]
    tags = [
        i
        for i, item in enumerate(loc)
        if isinstance(item, str) and (_UNION_TAG_RE.match(item) or item in words)
    ]
    count = len(errors)
    if tags:
        # The value fits no member of a union: say what would fit, once.
        cut = tags[0]
        prefix = loc[:cut]
        members = {
            e["loc"][cut] for e in errors if tuple(e["loc"][:cut]) == prefix and len(e["loc"]) > cut
        }
        same = [e for e in errors if tuple(e["loc"][:cut]) == prefix]
        count = len(errors) - len(same) + 1
        nested = [e for e in same if len(e["loc"]) > cut + 1]
        if nested and len({e["loc"][cut] for e in nested}) == 1:
            # A mapping meant for the one member that is a mapping: its own error is clearer.
            inner = nested[0]
            rest = [
                item
                for item in inner["loc"][cut + 1 :]
                if not (isinstance(item, str) and (_UNION_TAG_RE.match(item) or item in words))
            ]
            path = _loc_to_path((*prefix, *rest))
            reason = _reason(inner, words)
        else:
            path = _loc_to_path(prefix)
            names = sorted(members, key=str)
            options = list(dict.fromkeys(words.get(str(m)) or _alternative(str(m)) for m in names))
            listed = ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else ""
            reason = f"expected {listed or options[0]}, got {_kind(same[0].get('input'))}"
    else:
        path = _loc_to_path(loc)
        reason = _reason(first, words)
        if key_error:
            reason = f"the name {first.get('input')!r} is not valid: {reason}"
    more = count - 1
    if more > 0:
        reason += f" (and {more} more error{'s' if more > 1 else ''})"
    return ConfigError(reason, source=source, path=path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a mapping that names a key twice (YAML 1.2 forbids it)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # an unhashable key: construct_mapping reports it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


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
            f"line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8",
            source=source,
        ) from exc


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file (UTF-8; a key given twice in one mapping is an error).

    Raises:
        ConfigError: the file cannot be read, is not UTF-8 text, is not valid YAML (with line
            and column) or names a key twice.
    """
    source = str(path)
    text = read_text_file(path)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or ""
        prefix = "" if problem.startswith("duplicate key") else "invalid YAML: "
        raise ConfigError(f"{where}{prefix}{problem}", source=source) from exc
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
