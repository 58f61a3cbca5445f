"""Which Redis commands the router forwards, and how it finds their keys.

The list starts from twemproxy's (``notes/redis.md``): every single-key command of strings,
hashes, lists, sets, sorted sets, HyperLogLog, bitmaps, geo and key expiry is routed by its
key (``args[1]``). ``MGET MSET DEL UNLINK EXISTS TOUCH`` are split over the shards and their
replies merged. Commands on several keys that cannot be split (``RENAME``, ``SINTERSTORE``,
``EVAL``...) are forwarded when every key lives on one shard (hash tags make that so) and
refused with an error naming the command otherwise. Anything else (server, cluster, pub/sub,
transactions, blocking pops) is refused with an error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Route(Enum):
    SINGLE = "single"  # one key at args[1]
    SPLIT = "split"  # MGET MSET DEL UNLINK EXISTS TOUCH
    SAME_SHARD = "same-shard"  # several keys that must live on one shard
    LOCAL = "local"  # PING ECHO SELECT QUIT


@dataclass(frozen=True, slots=True)
class Spec:
    route: Route
    write: bool = False
    first: int = 1  # SAME_SHARD: index of the first key
    last: int = -1  # SAME_SHARD: index of the last key (negative: from the end)
    step: int = 1  # SAME_SHARD: distance between keys


_READS_1 = (
    "GET GETRANGE STRLEN GETBIT BITCOUNT BITPOS SUBSTR TTL PTTL TYPE EXPIRETIME PEXPIRETIME "
    "DUMP HGET HMGET HGETALL HKEYS HVALS HLEN HEXISTS HSTRLEN HSCAN HRANDFIELD LINDEX LLEN "
    "LRANGE LPOS SCARD SISMEMBER SMISMEMBER SMEMBERS SRANDMEMBER SSCAN ZCARD ZCOUNT "
    "ZLEXCOUNT ZRANGE ZRANGEBYLEX ZRANGEBYSCORE ZREVRANGE ZREVRANGEBYLEX ZREVRANGEBYSCORE "
    "ZRANK ZREVRANK ZSCORE ZMSCORE ZSCAN ZRANDMEMBER PFCOUNT GEOPOS GEODIST GEOHASH "
    "GEORADIUS_RO GEORADIUSBYMEMBER_RO GEOSEARCH"
)
_WRITES_1 = (
    "SET SETNX SETEX PSETEX GETSET GETDEL GETEX APPEND SETRANGE SETBIT INCR INCRBY "
    "INCRBYFLOAT DECR DECRBY EXPIRE EXPIREAT PEXPIRE PEXPIREAT PERSIST RESTORE HSET HSETNX "
    "HMSET HDEL HINCRBY HINCRBYFLOAT LPUSH LPUSHX RPUSH RPUSHX LPOP RPOP LSET LREM LTRIM "
    "LINSERT SADD SREM SPOP ZADD ZINCRBY ZREM ZREMRANGEBYRANK ZREMRANGEBYSCORE "
    "ZREMRANGEBYLEX ZPOPMIN ZPOPMAX PFADD GEOADD BITFIELD"
)
_SPLIT = {"MGET": False, "MSET": True, "DEL": True, "UNLINK": True, "EXISTS": False, "TOUCH": False}

SPECS: dict[bytes, Spec] = {}
for _name in _READS_1.split():
    SPECS[_name.encode()] = Spec(Route.SINGLE)
for _name in _WRITES_1.split():
    SPECS[_name.encode()] = Spec(Route.SINGLE, write=True)
for _name, _write in _SPLIT.items():
    SPECS[_name.encode()] = Spec(Route.SPLIT, write=_write)
for _name, _spec in {
    "RENAME": Spec(Route.SAME_SHARD, True, 1, 2),
    "RENAMENX": Spec(Route.SAME_SHARD, True, 1, 2),
    "COPY": Spec(Route.SAME_SHARD, True, 1, 2),
    "RPOPLPUSH": Spec(Route.SAME_SHARD, True, 1, 2),
    "LMOVE": Spec(Route.SAME_SHARD, True, 1, 2),
    "SMOVE": Spec(Route.SAME_SHARD, True, 1, 2),
    "SDIFF": Spec(Route.SAME_SHARD, False, 1, -1),
    "SINTER": Spec(Route.SAME_SHARD, False, 1, -1),
    "SUNION": Spec(Route.SAME_SHARD, False, 1, -1),
    "SDIFFSTORE": Spec(Route.SAME_SHARD, True, 1, -1),
    "SINTERSTORE": Spec(Route.SAME_SHARD, True, 1, -1),
    "SUNIONSTORE": Spec(Route.SAME_SHARD, True, 1, -1),
    "PFMERGE": Spec(Route.SAME_SHARD, True, 1, -1),
    "MSETNX": Spec(Route.SAME_SHARD, True, 1, -1, 2),
    "BITOP": Spec(Route.SAME_SHARD, True, 2, -1),
    "EVAL": Spec(Route.SAME_SHARD, True),
    "EVALSHA": Spec(Route.SAME_SHARD, True),
    "PING": Spec(Route.LOCAL),
    "ECHO": Spec(Route.LOCAL),
    "SELECT": Spec(Route.LOCAL),
    "QUIT": Spec(Route.LOCAL),
}.items():
    SPECS[_name.encode()] = _spec


def same_shard_keys(name: bytes, spec: Spec, args: list[bytes]) -> list[bytes] | None:
    """The keys of a SAME_SHARD command, or None when the arguments do not fit its form."""
    if name in (b"EVAL", b"EVALSHA"):
        if len(args) < 3 or not args[2].isdigit():
            return None
        count = int(args[2])
        if count < 1 or len(args) < 3 + count:
            return None
        return args[3 : 3 + count]
    last = spec.last if spec.last >= 0 else len(args) + spec.last
    keys = args[spec.first : last + 1 : spec.step]
    if not keys or last >= len(args):
        return None
    return keys
