"""The one exception tree of podkit.

Every error that crosses a public API is a :class:`PodkitError`. Foreign exceptions (OS, redis,
sqlite, ssl...) are translated where they are caught, with ``raise ... from exc`` so the cause
stays visible. Errors carry data a caller can act on: an exit code for the CLI and, for
protocol errors, the HTTP status a server should answer.
"""

from __future__ import annotations

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class PodkitError(Exception):
    """Root of every podkit error. The CLI prints it as one line and exits ``exit_code``."""

    exit_code: int = EXIT_RUNTIME


class UsageError(PodkitError):
    """A command was called with arguments that cannot work (exit code 2)."""

    exit_code = EXIT_USAGE


class ConfigError(PodkitError):
    """A configuration file or value is invalid.

    Attributes:
        source: the file (or ``"<flags>"``) the value came from.
        path: the dotted path of the field inside it, e.g. ``pods.web.replicas``.
        reason: what was wrong and what was expected.
    """

    exit_code = EXIT_USAGE

    def __init__(self, reason: str, *, source: str | None = None, path: str | None = None) -> None:
        self.source = source
        self.path = path
        self.reason = reason
        where = ""
        if source and path:
            where = f"{source}: {path}: "
        elif source:
            where = f"{source}: "
        elif path:
            where = f"{path}: "
        super().__init__(f"{where}{reason}")


class ListenError(PodkitError):
    """A server could not listen on its address (in use, not this machine's, no permission).

    Attributes:
        host: the address's host.
        port: its port.
        reason: why, in the operating system's words.
    """

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"cannot listen on {address}: {reason}")


class PodkitTimeout(PodkitError, TimeoutError):
    """An operation did not finish within its deadline."""


class ProtocolError(PodkitError):
    """A peer broke the wire protocol. ``status`` is the HTTP status a server answers with."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The remote peer sent something the protocol forbids."""


class BackendError(PodkitError):
    """A coordination backend (sqlite, redis, etcd) failed."""


class BackendUnavailable(BackendError):
    """The backend could not be reached; the operation may succeed later."""


class LeaseLost(PodkitError):
    """A lease or leadership can no longer be guaranteed; the holder must stop acting."""
