"""``podkit broker``: one local address, the right upstream for this environment (the book's
environment-broker ambassador).

The decisions (current environment, epochs, upstream health) are the sans-IO
:class:`BrokerTable`; the shell on the TCP and HTTP engines is ``podkit.ambassador.broker.app``.
"""

from podkit.ambassador.broker._auth import AuthFailed, RedisCredentials, parse_redis_auth
from podkit.ambassador.broker._core import (
    BrokerTable,
    EnvChange,
    Health,
    parse_map_entry,
    parse_upstreams,
)
from podkit.ambassador.broker._sources import EnvSource

__all__ = [
    "AuthFailed",
    "BrokerTable",
    "EnvChange",
    "EnvSource",
    "Health",
    "RedisCredentials",
    "parse_map_entry",
    "parse_redis_auth",
    "parse_upstreams",
]
