"""podkit.shard: the sharding ambassador's Python API.

* :class:`ShardedClient`: shard keys over memcached or Redis from Python, exactly where
  ``podkit shard`` puts them, with no proxy hop;
* :class:`ShardRouter`: the placement and health decisions both are made of.
"""

from podkit.ambassador.shard import HotKeys, Placement, ShardRouter, ShardState, hash_tag_key
from podkit.ambassador.shard.client import ShardedClient, ShardError, ShardUnavailable

__all__ = [
    "HotKeys",
    "Placement",
    "ShardError",
    "ShardRouter",
    "ShardState",
    "ShardUnavailable",
    "ShardedClient",
    "hash_tag_key",
]
