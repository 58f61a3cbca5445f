"""Real coordination servers on loopback, each in its own temporary directory.

Used by the tests (backend contract suites), the benchmarks and users' own tests. A missing
binary is an error that says how to install it; it never skips silently.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from podkit.errors import PodkitError
from podkit.testing.net import free_port, wait_for, wait_port
from podkit.testing.processes import ServerProcess

_APT_PACKAGE = {
    "redis-server": "redis-server",
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
    "memcached": "memcached",
    "nutcracker": "nutcracker",
    "nginx": "nginx",
    "haproxy": "haproxy",
    "promtool": "prometheus",
    "initdb": "postgresql",
    "postgres": "postgresql",
}
# Debian keeps PostgreSQL's server programs off PATH, in one directory per major version.
_POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH.

    Raises:
        PodkitError: it is not installed (the message says which package provides it).
    """
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        found = sorted(glob.glob(f"{_POSTGRES_BIN_GLOB}/{name}"))
        path = found[-1] if found else None  # the newest major version
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


class PostgresServer(_Server):
    """A PostgreSQL cluster made with ``initdb`` (trust logins on loopback, no fsync).

    PostgreSQL refuses to run as root; when the tests run as root, the cluster belongs to the
    unprivileged ``postgres`` user (which Debian's package creates) and runs under
    ``runuser``. ``.url`` is ``postgresql://postgres@127.0.0.1:PORT/postgres``.
    """

    binary = "postgres"
    user = "postgres"

    def _as_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return [require_binary("runuser"), "-u", self.user, "--"]

    def _initdb(self) -> None:
        data = self.dir / "data"
        if data.exists():
            return
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        argv = [
            *self._as_user(),
            require_binary("initdb"),
            "-D", str(data),
            "-U", "postgres",
            "--auth=trust",
            "-E", "UTF8",
            "--no-sync",
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PodkitError(f"initdb failed: {(done.stderr or done.stdout)[-2000:]}")

    def argv(self) -> list[str]:
        return [
            *self._as_user(),
            require_binary("postgres"),
            "-D", str(self.dir / "data"),
            "-p", str(self.port),
            "-k", str(self.dir),
            "-c", f"listen_addresses={self.host}",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
        ]  # fmt: skip

    def start(self, *, timeout: float = 30.0) -> None:
        self._initdb()
        super().start(timeout=timeout)
        # The port opens before the server takes logins ("the database system is starting up").
        ready = [require_binary("pg_isready"), "-q", "-h", self.host, "-p", str(self.port)]
        wait_for(
            lambda: subprocess.run(ready, check=False).returncode == 0,
            timeout=timeout,
            what=f"postgres on {self.host}:{self.port} to take logins",
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"


class NginxServer(_Server):
    """``nginx`` serving a small static site on ``port`` and ``stub_status`` at ``/status``.

    ``.status_url`` is the stub_status page; ``GET /`` answers a short text.
    """

    binary = "nginx"

    def _config(self) -> Path:
        user = "user root;\n" if os.geteuid() == 0 else ""
        d = self.dir
        conf = d / "nginx.conf"
        conf.write_text(
            f"{user}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\n"
            f"error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n"
            "http {\n"
            f"  access_log {d}/access.log;\n"
            f"  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n"
            f"  fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi;\n"
            f"  scgi_temp_path {d}/scgi;\n"
            f"  server {{\n    listen {self.host}:{self.port};\n"
            "    location = /status { stub_status; }\n"
            '    location / { default_type text/plain; return 200 "hello\\n"; }\n  }\n}\n'
        )
        return conf

    def argv(self) -> list[str]:
        return [require_binary("nginx"), "-p", str(self.dir), "-c", str(self._config())]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def status_url(self) -> str:
        return f"http://{self.host}:{self.port}/status"


class HAProxyServer(_Server):
    """``haproxy`` in the foreground: a frontend on ``port`` to ``upstream`` (HOST:PORT) and
    its statistics page on ``stats_port`` (``.stats_url``, CSV with ``;csv``)."""

    binary = "haproxy"

    def __init__(self, upstream: str, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(port=port, host=host)
        self.upstream = upstream
        self.stats_port = free_port(host)

    def argv(self) -> list[str]:
        conf = self.dir / "haproxy.cfg"
        conf.write_text(
            "global\n  maxconn 256\n"
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n"
            "  timeout server 10s\n"
            f"frontend web\n  bind {self.host}:{self.port}\n  default_backend app\n"
            f"backend app\n  server app1 {self.upstream}\n"
            f"listen stats\n  bind {self.host}:{self.stats_port}\n  stats enable\n"
            "  stats uri /stats\n"
        )
        return [require_binary("haproxy"), "-db", "-f", str(conf)]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def stats_url(self) -> str:
        return f"http://{self.host}:{self.stats_port}/stats"


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
