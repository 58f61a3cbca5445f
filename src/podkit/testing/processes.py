"""Child processes for tests: podkit commands and server binaries, always stopped at exit."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from podkit.errors import PodkitTimeout


class ServerProcess:
    """A child process with its output in a file, stopped (and reaped) on exit.

    Each process leads its own process group, so :meth:`stop` also reaches its children.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self.proc: subprocess.Popen[bytes] | None = None
        # The log outlives start() and stop(): it is read after the process exits.
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix=f"{self.name}-", suffix=".log", delete=False
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None, "process not started"
        return self.proc.pid

    @property
    def log_path(self) -> str:
        return self._log.name

    def start(self) -> ServerProcess:
        full_env = dict(os.environ)
        if self.env:
            full_env.update(self.env)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=self.cwd,
            start_new_session=True,
        )
        return self

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return Path(self._log.name).read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.running():
            assert self.proc is not None
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit and return its exit code."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise PodkitTimeout(f"{self.name} did not exit within {timeout}s") from exc

    def stop(self, *, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL to the whole group after ``grace`` seconds."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        return code

    def kill(self) -> None:
        """SIGKILL the process (and its group) now, without a chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)


class PodkitProcess(ServerProcess):
    """``python -m podkit ARGS...`` as a child process (the same interpreter as the caller)."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None
    ) -> None:
        super().__init__(
            [sys.executable, "-m", "podkit", *args],
            env=env,
            cwd=cwd,
            name=f"podkit-{args[0] if args else 'cli'}",
        )
