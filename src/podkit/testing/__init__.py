"""Tools for testing with real processes on loopback: free ports, waits, podkit processes and
real servers (redis-server, etcd, memcached, PostgreSQL) started in a temporary directory.

They are part of the product: the test suite, the benchmarks and users' own tests use them.
"""

from podkit.testing.net import free_port, wait_http, wait_port
from podkit.testing.processes import PodkitProcess, ServerProcess
from podkit.testing.servers import (
    EtcdServer,
    HAProxyServer,
    MemcachedServer,
    NginxServer,
    NutcrackerServer,
    PostgresServer,
    RedisServer,
    require_binary,
)

__all__ = [
    "EtcdServer",
    "HAProxyServer",
    "MemcachedServer",
    "NginxServer",
    "NutcrackerServer",
    "PodkitProcess",
    "PostgresServer",
    "RedisServer",
    "ServerProcess",
    "free_port",
    "require_binary",
    "wait_http",
    "wait_port",
]
