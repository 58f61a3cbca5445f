"""What every component shares: lifecycle, signals, admin endpoint, metrics, logging, config."""

from podkit.runtime.component import (
    DEFAULT_DRAIN_TIMEOUT,
    ComponentMain,
    Runtime,
    RuntimeOptions,
    run_async,
    run_component,
    serve_component,
)
from podkit.runtime.config import (
    HostPort,
    format_duration,
    format_size,
    load_model,
    load_yaml,
    parse_duration,
    parse_hostport,
    parse_size,
)
from podkit.runtime.httpserver import Request, Response, SimpleHTTPServer
from podkit.runtime.lifecycle import IllegalTransition, Lifecycle, Phase
from podkit.runtime.logging import configure_logging, get_logger

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "ComponentMain",
    "HostPort",
    "IllegalTransition",
    "Lifecycle",
    "Phase",
    "Request",
    "Response",
    "Runtime",
    "RuntimeOptions",
    "SimpleHTTPServer",
    "configure_logging",
    "format_duration",
    "format_size",
    "get_logger",
    "load_model",
    "load_yaml",
    "parse_duration",
    "parse_hostport",
    "parse_size",
    "run_async",
    "run_component",
    "serve_component",
]
