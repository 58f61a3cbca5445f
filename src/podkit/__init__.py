"""podkit: the patterns of distributed systems as real, composable components."""

from podkit.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    LeaseLost,
    LocalProtocolError,
    PodkitError,
    PodkitTimeout,
    ProtocolError,
    RemoteProtocolError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ConfigError",
    "LeaseLost",
    "LocalProtocolError",
    "PodkitError",
    "PodkitTimeout",
    "ProtocolError",
    "RemoteProtocolError",
    "UsageError",
    "__version__",
]
