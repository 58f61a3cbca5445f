"""The broker's map file: ``ENV: HOST:PORT[,HOST:PORT...]`` (or a list) per environment."""

from __future__ import annotations

from pathlib import Path

from podkit.ambassador.broker._core import parse_upstreams
from podkit.engines.http import Upstream
from podkit.errors import ConfigError
from podkit.runtime import load_yaml


def read_map_file(path: Path, *, http: bool) -> dict[str, tuple[Upstream, ...]]:
    """A YAML map ``{ENV: "HOST:PORT,HOST:PORT" or [HOST:PORT, ...]}``.

    Raises:
        ConfigError: naming the file and the environment.
    """
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of ENV: HOST:PORT[,HOST:PORT...]", source=str(path))
    envs: dict[str, tuple[Upstream, ...]] = {}
    for name, value in data.items():
        text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
        try:
            envs[str(name)] = parse_upstreams(text, field=str(name), http=http)
        except ConfigError as exc:
            raise ConfigError(exc.reason, source=str(path), path=str(name)) from exc
    return envs
