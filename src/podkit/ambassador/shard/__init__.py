"""podkit.ambassador.shard: a sharding router for memcached and Redis (``podkit shard``).

The router core (:class:`ShardRouter`) places keys with :mod:`podkit.hashing`, keeps each
shard's health (ejection after ``fail_limit`` failures, retry after ``retry_after``), writes
to ``replicas`` shards and spreads hot keys over extra shards. The protocol cores parse the
memcached text protocol and RESP2 without I/O.
"""

from podkit.ambassador.shard._hotkeys import HotKey, HotKeys, SpaceSaving
from podkit.ambassador.shard._router import (
    ALGORITHMS,
    DEFAULT_FAIL_LIMIT,
    DEFAULT_REPLICAS,
    DEFAULT_RETRY_AFTER,
    KEY_HASHES,
    Placement,
    ShardRouter,
    ShardState,
    ShardStatistics,
    hash_tag_key,
)

__all__ = [
    "ALGORITHMS",
    "DEFAULT_FAIL_LIMIT",
    "DEFAULT_REPLICAS",
    "DEFAULT_RETRY_AFTER",
    "KEY_HASHES",
    "HotKey",
    "HotKeys",
    "Placement",
    "ShardRouter",
    "ShardState",
    "ShardStatistics",
    "SpaceSaving",
    "hash_tag_key",
]
