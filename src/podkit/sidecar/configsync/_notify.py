"""How the application is told that its configuration changed: a signal, a command, a POST."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path
from typing import Final, Protocol

import httpx

from podkit.errors import ConfigError
from podkit.sidecar.configsync._core import Stage, SyncFailure, substitute

DEFAULT_NOTIFY_TIMEOUT: Final = 30.0  # a reload hook slower than this is treated as failed


class Notifier(Protocol):
    @property
    def description(self) -> str: ...

    async def notify(self, path: str, content: bytes) -> None:
        """Tell the application that ``path`` now holds ``content``.

        Raises:
            SyncFailure: (stage ``notify``) the application could not be told.
        """
        ...

    async def aclose(self) -> None: ...


def parse_signal(name: str) -> signal.Signals:
    """``HUP``, ``SIGHUP`` or ``1`` → ``signal.SIGHUP``.

    Raises:
        ConfigError: not a signal name or number.
    """
    text = name.strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"unknown signal {name!r}", path="--signal") from exc


class SignalNotifier:
    """Sends a signal to the process whose pid is in ``pid_file`` (read at every change).

    A missing pid file means the application is not running yet: nothing is sent and it is
    not a failure. An unreadable pid file or a pid that is gone is a failure.
    """

    def __init__(self, signum: signal.Signals, pid_file: str) -> None:
        self.signum = signum
        self.pid_file = pid_file

    @property
    def description(self) -> str:
        return f"{self.signum.name} to the pid in {self.pid_file}"

    async def notify(self, path: str, content: bytes) -> None:
        try:
            text = _read_small(self.pid_file)
        except FileNotFoundError:
            # No pid file: the application has not started yet, and will read the file when
            # it does. There is no one to tell.
            return
        except (OSError, UnicodeError) as exc:
            raise SyncFailure(Stage.NOTIFY, f"cannot read pid file {self.pid_file}: {exc}") from exc
        if not text.isdigit() or int(text) <= 1:
            raise SyncFailure(Stage.NOTIFY, f"pid file {self.pid_file} holds {text[:20]!r}")
        try:
            os.kill(int(text), self.signum)
        except OSError as exc:
            raise SyncFailure(
                Stage.NOTIFY, f"cannot signal pid {text}: {exc.strerror or exc}"
            ) from exc

    async def aclose(self) -> None:
        return None


def _read_small(path: str) -> str:
    # A pid file is a few bytes on a local disk: reading it does not block the loop.
    return Path(path).read_text(encoding="ascii").strip()


class ExecNotifier:
    """Runs a command (``{}`` is replaced by the destination path); exit 0 is success."""

    def __init__(self, argv: list[str], *, timeout: float = DEFAULT_NOTIFY_TIMEOUT) -> None:
        self.argv = argv
        self.timeout = timeout

    @property
    def description(self) -> str:
        return " ".join(self.argv)

    async def notify(self, path: str, content: bytes) -> None:
        code, output = await run_command(substitute(self.argv, path), timeout=self.timeout)
        if code != 0:
            raise SyncFailure(Stage.NOTIFY, f"{self.argv[0]} exited {code}: {output}")

    async def aclose(self) -> None:
        return None


class PostNotifier:
    """POSTs ``{"path": ..., "sha256": ...}`` to a URL; a 2xx answer is success."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_NOTIFY_TIMEOUT) -> None:
        self.url = url
        self._client = httpx.AsyncClient(timeout=timeout)

    @property
    def description(self) -> str:
        return f"POST {self.url}"

    async def notify(self, path: str, content: bytes) -> None:
        body = {"path": path, "sha256": hashlib.sha256(content).hexdigest()}
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise SyncFailure(Stage.NOTIFY, f"{self.url}: {exc.__class__.__name__}") from exc
        if not 200 <= response.status_code < 300:
            raise SyncFailure(Stage.NOTIFY, f"{self.url}: answered {response.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()


async def run_command(argv: list[str], *, timeout: float) -> tuple[int, str]:
    """Run ``argv`` and return its exit code and the last 300 characters of its output.

    A command that cannot start exits 127; one that overruns ``timeout`` is killed (-9).
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return 127, f"cannot run {argv[0]}: {exc.strerror or exc}"
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -9, f"killed after {timeout:g}s"
    text = output.decode("utf-8", "replace").strip()
    return proc.returncode if proc.returncode is not None else -1, text[-300:]
