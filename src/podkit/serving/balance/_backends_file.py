"""The backends file: one backend URL per line, an optional weight, ``#`` comments.

::

    # written by the pod supervisor or the dynamic-config sidecar
    http://127.0.0.1:8001
    http://127.0.0.1:8002 weight=2   # a bigger replica

The balancer re-reads it when it changes (or on SIGHUP); a file with an error is rejected as a
whole and the previous membership stays, so a half-written file never empties the pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from podkit.errors import ConfigError
from podkit.serving.balance._endpoint import MAX_WEIGHT

MAX_BACKENDS = 10_000  # a larger pool is a typo or a runaway generator
MAX_BACKENDS_FILE_BYTES = 4 * 1024 * 1024  # ~10k lines of URLs fit many times over


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One backend as configured: its base URL (normalised) and weight."""

    url: str
    weight: int = 1


def normalise_url(text: str, *, source: str | None = None, path: str | None = None) -> str:
    """Check a backend URL and return it as ``scheme://host:port`` (no trailing slash).

    ``http`` and ``https`` are accepted (the port defaults to 80 and 443).

    Raises:
        ConfigError: not an ``http://host:port`` or ``https://host:port`` URL.
    """
    parts = urlsplit(text.strip())
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"bad port in backend URL {text!r}", source=source, path=path) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"expected a backend URL such as http://127.0.0.1:8001, got {text!r}",
            source=source,
            path=path,
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"a backend URL names a server only (no path or query), got {text!r}",
            source=source,
            path=path,
        )
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}:{port if port is not None else default_port}"


def parse_backend(text: str, *, source: str | None = None, path: str | None = None) -> BackendSpec:
    """Parse ``URL [weight=N]`` (the syntax of a line and of ``--backend``).

    Raises:
        ConfigError: the URL or an option is invalid.
    """
    fields = text.split()
    if not fields:
        raise ConfigError("empty backend", source=source, path=path)
    url = normalise_url(fields[0], source=source, path=path)
    weight = 1
    for option in fields[1:]:
        key, sep, value = option.partition("=")
        if key != "weight" or not sep:
            raise ConfigError(
                f"unknown backend option {option!r} (expected weight=N)", source=source, path=path
            )
        if not value.isdigit() or not 1 <= int(value) <= MAX_WEIGHT:
            raise ConfigError(
                f"weight must be a whole number 1..{MAX_WEIGHT}, got {value!r}",
                source=source,
                path=path,
            )
        weight = int(value)
    return BackendSpec(url, weight)


def parse_backends(text: str, *, source: str | None = None) -> list[BackendSpec]:
    """Parse a backends file's text.

    Returns:
        The backends in file order. A URL listed twice is an error.

    Raises:
        ConfigError: a line is invalid (the error names ``line N``).
    """
    specs: list[BackendSpec] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        where = f"line {number}"
        spec = parse_backend(line, source=source, path=where)
        if spec.url in seen:
            raise ConfigError(
                f"{spec.url} is already listed on line {seen[spec.url]}", source=source, path=where
            )
        seen[spec.url] = number
        specs.append(spec)
        if len(specs) > MAX_BACKENDS:
            raise ConfigError(f"more than {MAX_BACKENDS} backends", source=source, path=where)
    return specs


def read_backends_file(path: str | Path) -> list[BackendSpec]:
    """Read and parse a backends file.

    Raises:
        ConfigError: the file cannot be read, is too large, or a line is invalid.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read backends file: {exc.strerror}", source=source) from exc
    if len(data) > MAX_BACKENDS_FILE_BYTES:
        raise ConfigError(f"larger than {MAX_BACKENDS_FILE_BYTES} bytes", source=source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("not UTF-8 text", source=source) from exc
    return parse_backends(text, source=source)
