"""Real coordination servers on loopback, each in its own temporary directory.

Used by the tests (backend contract suites), the benchmarks and users' own tests. A missing
binary is an error that says how to install it; it never skips silently.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from podkit.errors import PodkitError
from podkit.testing.net import free_port, wait_port
from podkit.testing.processes import ServerProcess

_APT_PACKAGE = {
    "redis-server": "redis-server",
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
    "memcached": "memcached",
    "nutcracker": "nutcracker",
}


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH.

    Raises:
        PodkitError: it is not installed (the message says which package provides it).
    """
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        package = _APT_PACKAGE.get(name, name)
        raise PodkitError(
            f"{name} is not installed: run `make setup` or `sudo apt-get install {package}`"
        )
    return path


class _Server:
    """Start/stop/restart a server on a fixed port with a data directory that survives restarts."""

    binary = ""

    def __init__(self, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._tmp = tempfile.TemporaryDirectory(prefix=f"podkit-{self.binary}-")
        self.dir = Path(self._tmp.name)
        self.process: ServerProcess | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self, *, timeout: float = 15.0) -> None:
        self.process = ServerProcess(self.argv(), cwd=self.dir, name=self.binary).start()
        try:
            wait_port(self.host, self.port, timeout=timeout)
        except PodkitError:
            output = self.process.output()[-2000:]
            self.process.stop()
            raise PodkitError(
                f"{self.binary} did not start on {self.host}:{self.port}: {output}"
            ) from None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._tmp.cleanup()


class RedisServer(_Server):
    """``redis-server`` with append-only persistence, so a restart keeps the data."""

    binary = "redis-server"

    def argv(self) -> list[str]:
        return [
            require_binary("redis-server"),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--protected-mode", "no",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


class EtcdServer(_Server):
    """A single-member ``etcd`` cluster.

    Args:
        port: the client port (default: a free one).
        host: the address to listen on.
        election_timeout: etcd's ``--election-timeout`` in seconds, with a heartbeat of a tenth
            of it (default: etcd's own, 1 s). etcd's shortest lease is 1.5 times the election
            timeout rounded up to whole seconds: 2 s by default, 1 s at 0.5 s.
    """

    binary = "etcd"

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        election_timeout: float | None = None,
    ) -> None:
        super().__init__(port=port, host=host)
        self.peer_port = free_port(host)
        self.election_timeout = election_timeout

    def argv(self) -> list[str]:
        client = f"http://{self.host}:{self.port}"
        peer = f"http://{self.host}:{self.peer_port}"
        return [
            require_binary("etcd"),
            "--name", "podkit-test",
            "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"podkit-test={peer}",
            "--log-level", "error",
            *self._timing_flags(),
        ]  # fmt: skip

    def _timing_flags(self) -> list[str]:
        if self.election_timeout is None:
            return []
        election_ms = max(10, round(self.election_timeout * 1000))
        heartbeat_ms = max(1, election_ms // 10)
        return ["--heartbeat-interval", str(heartbeat_ms), "--election-timeout", str(election_ms)]

    @property
    def url(self) -> str:
        return f"etcd://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"


class MemcachedServer(_Server):
    """``memcached`` with 64 MiB of memory."""

    binary = "memcached"

    def argv(self) -> list[str]:
        return [
            require_binary("memcached"),
            "-l", self.host,
            "-p", str(self.port),
            "-U", "0",
            "-m", "64",
            "-u", "root",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"memcached://{self.host}:{self.port}"


class NutcrackerServer(_Server):
    """``nutcracker`` (twemproxy) in front of ``servers``: the peer ``podkit shard`` is
    compared with, for key placement and in the benchmarks.

    Args:
        servers: ``(name, host, port)`` of each shard; the name is what keys hash to.
        redis: speak RESP to the shards instead of the memcached text protocol.
        hash, distribution: twemproxy's ``hash`` and ``distribution`` (md5 and ketama,
            the placement libmemcached and ``podkit shard --algo ring --hash md5`` use).
    """

    binary = "nutcracker"

    def __init__(
        self,
        servers: list[tuple[str, str, int]],
        *,
        redis: bool = False,
        hash: str = "md5",
        distribution: str = "ketama",
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(port=port, host=host)
        self.stats_port = free_port(host)
        lines = [
            "pool:",
            f"  listen: {host}:{self.port}",
            f"  hash: {hash}",
            f"  distribution: {distribution}",
            f"  redis: {'true' if redis else 'false'}",
            "  auto_eject_hosts: false",
            "  preconnect: true",
            "  servers:",
            *(f"    - {h}:{p}:1 {name}" for name, h, p in servers),
        ]
        (self.dir / "nutcracker.yml").write_text("\n".join(lines) + "\n")

    def argv(self) -> list[str]:
        return [
            require_binary("nutcracker"),
            "-c", str(self.dir / "nutcracker.yml"),
            "-s", str(self.stats_port),
            "-a", self.host,
            "-o", str(self.dir / "nutcracker.log"),
            "-p", str(self.dir / "nutcracker.pid"),
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"
