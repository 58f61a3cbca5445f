"""The sharding router's decisions: which shards a key goes to, and which shards are healthy.

Theory of operation. Keys are placed by a :mod:`podkit.hashing` function over the shard
names. With ``ring`` the key's point on the ketama continuum comes from the ``--hash``
function, exactly as twemproxy computes it (``md5``: MD5 bytes 0-3 little-endian, the
ketama/libmemcached/twemproxy default; ``fnv1a_64``: twemproxy's 32-bit truncation of FNV-1a;
``crc32``: the full CRC-32, twemproxy's ``crc32a``; ``xxh3``: the low 32 bits of XXH3-64), and
the continuum is :class:`~podkit.hashing.KetamaRing`'s, so with ``--hash md5`` podkit and
nutcracker place every key on the same server when the shards have the same names. The other
algorithms hash with their own key hash (XXH3); another ``--hash`` is applied first.

With a hash tag (``{}``) only the part of a key between the braces is hashed, so
``user:{42}:name`` and ``user:{42}:mail`` share a shard.

Each shard's health is a state machine (:data:`TRANSITIONS`): READY shards take traffic; a
shard that fails ``fail_limit`` times in a row is EJECTED and its keys go to the next shard
in the key's preference order; after ``retry_after`` seconds it is PROBING: it takes traffic
again, and the first success makes it READY, a failure ejects it again. ``now`` is always
passed in.

With ``replicas`` R a write goes to the key's first R available shards and a read to the
first available one (the shell tries the next on failure). A hot key
(:mod:`~podkit.ambassador.shard._hotkeys`) is also kept on extra shards: its reads go to the
least loaded of them, its writes to all of them.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

from xxhash import xxh3_64_intdigest

from podkit.ambassador.shard._hotkeys import HotKey, HotKeys
from podkit.errors import PodkitError
from podkit.hashing import KetamaRing, sharding_function
from podkit.hashing.ring import _md5

DEFAULT_FAIL_LIMIT = 2  # twemproxy's server_failure_limit default
DEFAULT_RETRY_AFTER = 30.0  # twemproxy's server_retry_timeout default
DEFAULT_REPLICAS = 1
KEY_HASHES = ("md5", "fnv1a_64", "crc32", "xxh3")
ALGORITHMS = ("ring", "maglev", "jump", "rendezvous")
LOAD_DECAY_EVERY = 100_000  # routed requests between halvings of the per-shard load counts


class ShardState(Enum):
    READY = "ready"
    EJECTED = "ejected"
    PROBING = "probing"


class IllegalTransition(PodkitError):
    """A shard's state machine was asked for a transition it does not have."""


TRANSITIONS: dict[tuple[ShardState, str], ShardState] = {
    (ShardState.READY, "success"): ShardState.READY,
    (ShardState.READY, "failure"): ShardState.READY,
    (ShardState.READY, "fail-limit"): ShardState.EJECTED,
    (ShardState.EJECTED, "retry-due"): ShardState.PROBING,
    (ShardState.EJECTED, "failure"): ShardState.EJECTED,  # a reply that was already in flight
    (ShardState.EJECTED, "success"): ShardState.EJECTED,
    (ShardState.PROBING, "success"): ShardState.READY,
    (ShardState.PROBING, "failure"): ShardState.EJECTED,
}


def _fnv1a_32_of_64(data: bytes) -> int:
    # twemproxy's hash_fnv1a_64 works in uint32_t with the 64-bit constants truncated, and
    # reads the key as (signed) char: bytes >= 0x80 are sign-extended before the xor.
    value = 0x84222325
    for byte in data:
        value ^= byte if byte < 0x80 else (byte | 0xFFFFFF00)
        value = (value * 0x1B3) & 0xFFFFFFFF
    return value


def _md5_point(data: bytes) -> int:
    return int.from_bytes(_md5(data).digest()[:4], "little")


KEY_POINT: dict[str, Callable[[bytes], int]] = {
    "md5": _md5_point,
    "fnv1a_64": _fnv1a_32_of_64,
    "crc32": zlib.crc32,
    "xxh3": lambda data: xxh3_64_intdigest(data) & 0xFFFFFFFF,
}


def hash_tag_key(key: bytes, tag: bytes) -> bytes:
    """The part of ``key`` that is hashed: the text between the first ``tag[0]`` and the next
    ``tag[1]`` when it is not empty (twemproxy's and Redis Cluster's rule), else the key."""
    if not tag:
        return key
    start = key.find(tag[:1])
    if start < 0:
        return key
    end = key.find(tag[1:2], start + 1)
    if end <= start + 1:
        return key
    return key[start + 1 : end]


class Placement:
    """Key -> shard preference order for one algorithm and key hash (immutable)."""

    def __init__(self, shards: Sequence[str], *, algorithm: str = "ring", key_hash: str = "md5"):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
        if key_hash not in KEY_POINT:
            raise ValueError(f"unknown hash {key_hash!r} (known: {', '.join(KEY_HASHES)})")
        self.shards = tuple(shards)
        self.algorithm = algorithm
        self.key_hash = key_hash
        self._point = KEY_POINT[key_hash]
        self.pick: Callable[[bytes], str]
        if algorithm == "ring":
            continuum = KetamaRing(self.shards).points
            self._points = [p for p, _ in continuum]
            self._owners = [n for _, n in continuum]
            self._owners.append(self._owners[0])
            self.pick = self._ring_pick
        else:
            self._function = sharding_function(algorithm, self.shards)
            self.pick = self._function.pick if key_hash == "xxh3" else self._prehashed_pick

    def _ring_pick(self, key: bytes) -> str:
        return self._owners[bisect_left(self._points, self._point(key))]

    def _prehashed_pick(self, key: bytes) -> str:
        return self._function.pick(self._point(key).to_bytes(4, "big"))

    def order(self, key: bytes) -> Iterator[str]:
        """Every shard once, in ``key``'s preference order (the first is :attr:`pick`'s)."""
        if self.algorithm != "ring":
            hkey = key if self.key_hash == "xxh3" else self._point(key).to_bytes(4, "big")
            yield from self._function.iter_nodes(hkey)
            return
        points, owners = self._points, self._owners
        size = len(points)
        start = bisect_left(points, self._point(key))
        seen: set[str] = set()
        for offset in range(size):
            node = owners[(start + offset) % size]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == len(self.shards):
                    return

    def first(self, key: bytes, n: int) -> list[str]:
        """The key's first ``n`` shards in preference order."""
        if n == 1:
            return [self.pick(key)]
        out: list[str] = []
        for node in self.order(key):
            out.append(node)
            if len(out) == n:
                break
        return out


@dataclass(slots=True)
class ShardHealth:
    """One shard's state and counters."""

    name: str
    state: ShardState = ShardState.READY
    failures: int = 0  # in a row
    ejected_until: float = 0.0
    requests: int = 0
    errors: int = 0
    ejections: int = 0
    load: float = 0.0  # recent requests (halved every LOAD_DECAY_EVERY)

    def _go(self, event: str) -> ShardState:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(f"shard {self.name}: no {event!r} from {self.state}") from None
        return self.state


@dataclass(frozen=True, slots=True)
class ShardStatistics:
    name: str
    state: str
    requests: int
    errors: int
    ejections: int
    failures_in_a_row: int
    retry_in: float | None


class ShardRouter:
    """Route keys to shards and keep every shard's health (sans-IO: ``now`` is passed in).

    Args:
        shards: shard names (their order is kept for ``jump``).
        algorithm: ``ring``, ``maglev``, ``jump`` or ``rendezvous``.
        key_hash: ``md5``, ``fnv1a_64``, ``crc32`` or ``xxh3``.
        hash_tag: two characters such as ``b"{}"``, or empty for none.
        replicas: shards each write goes to.
        fail_limit: failures in a row that eject a shard.
        retry_after: seconds an ejected shard waits before it is tried again.
        hot_keys: the hot-key sketch, or None to keep every key on its own shards only.

    Raises:
        ValueError: an option is out of range or unknown.
    """

    def __init__(
        self,
        shards: Sequence[str],
        *,
        algorithm: str = "ring",
        key_hash: str = "md5",
        hash_tag: bytes = b"",
        replicas: int = DEFAULT_REPLICAS,
        fail_limit: int = DEFAULT_FAIL_LIMIT,
        retry_after: float = DEFAULT_RETRY_AFTER,
        hot_keys: HotKeys | None = None,
    ) -> None:
        if not shards:
            raise ValueError("at least one shard is needed")
        if len(set(shards)) != len(shards):
            raise ValueError("shard names must be unique")
        if hash_tag and len(hash_tag) != 2:
            raise ValueError(f"a hash tag is two characters such as '{{}}', not {hash_tag!r}")
        if not 1 <= replicas <= len(shards):
            raise ValueError(f"replicas must be between 1 and {len(shards)}, not {replicas}")
        if fail_limit < 1:
            raise ValueError(f"fail limit must be >= 1, not {fail_limit}")
        self.placement = Placement(shards, algorithm=algorithm, key_hash=key_hash)
        self.hash_tag = hash_tag
        self.replicas = replicas
        self.fail_limit = fail_limit
        self.retry_after = retry_after
        self.hot_keys = hot_keys
        self.health = {name: ShardHealth(name) for name in shards}
        self._unavailable = 0  # shards not READY: when 0, routing takes the short path
        self._routed = 0

    # -- placement ----------------------------------------------------------------------

    def hashed(self, key: bytes) -> bytes:
        """The part of ``key`` that decides its shard (see hash tags)."""
        return hash_tag_key(key, self.hash_tag) if self.hash_tag else key

    def shard_of(self, key: bytes) -> str:
        """The key's own shard, whatever the health of the shards."""
        return self.placement.pick(self.hashed(key))

    def _available(self, shard: str, now: float) -> bool:
        health = self.health[shard]
        if health.state is ShardState.EJECTED:
            if now < health.ejected_until:
                return False
            health._go("retry-due")
        return True

    def _targets(self, hkey: bytes, n: int, now: float) -> list[str]:
        if not self._unavailable and n == 1:
            return [self.placement.pick(hkey)]
        out: list[str] = []
        for shard in self.placement.order(hkey):
            if self._available(shard, now):
                out.append(shard)
                if len(out) == n:
                    break
        return out

    def _count(self, shard: str) -> None:
        health = self.health[shard]
        health.requests += 1
        health.load += 1
        self._routed += 1
        if self._routed % LOAD_DECAY_EVERY == 0:
            for each in self.health.values():
                each.load /= 2

    def read_targets(
        self, key: bytes, now: float, *, spread: bool = True, count: bool = True
    ) -> list[str]:
        """Shards to read ``key`` from, best first (the rest are for failing over).

        Args:
            key: the key.
            now: the current time.
            spread: a hot key may be read from its extra copies (False for reads whose
                answer differs per shard, such as memcached's ``gets`` with its CAS value).
            count: count the request against the first shard.

        Returns:
            The shards, empty when none is available.
        """
        hkey = self.hashed(key)
        hot = self.hot_keys
        copies = 1
        if hot is not None:
            hot.record(key)
            if spread:
                copies = hot.copies(key)
        if copies == 1:
            targets = self._targets(hkey, self.replicas, now)
        else:
            # A hot key: read from the least loaded of its copies that is available.
            targets = self._targets(hkey, max(copies, self.replicas), now)
            if len(targets) > 1:
                best = min(targets, key=lambda s: self.health[s].load)
                targets.remove(best)
                targets.insert(0, best)
        if count and targets:
            self._count(targets[0])
        return targets

    def write_targets(self, key: bytes, now: float, *, delete: bool = False) -> list[str]:
        """Shards a write of ``key`` goes to (all of them), primary first."""
        hkey = self.hashed(key)
        copies = self.replicas
        hot = self.hot_keys
        if hot is not None:
            extra = hot.delete_copies(key) if delete else hot.copies(key)
            copies = max(copies, extra)
        targets = self._targets(hkey, copies, now)
        for shard in targets:
            self._count(shard)
        return targets

    def hot_copy(self, key: bytes, shard: str) -> bool:
        """Whether ``shard`` holds ``key`` only as a hot key's extra copy."""
        owners = self.placement.first(self.hashed(key), self.replicas)
        return shard not in owners

    def with_shards(self, shards: Sequence[str]) -> ShardRouter:
        """A router over another shard list with the same options; shards present in both
        keep their health (an ejected shard stays ejected). Hot-key heat starts again.

        Raises:
            ValueError: the list is empty, repeats a name, or is shorter than ``replicas``.
        """
        hot = self.hot_keys
        router = ShardRouter(
            shards,
            algorithm=self.placement.algorithm,
            key_hash=self.placement.key_hash,
            hash_tag=self.hash_tag,
            replicas=self.replicas,
            fail_limit=self.fail_limit,
            retry_after=self.retry_after,
            hot_keys=None if hot is None else HotKeys(len(shards), capacity=hot.sketch.capacity),
        )
        for name in shards:
            if name in self.health:
                router.health[name] = self.health[name]
        router._unavailable = sum(
            1 for h in router.health.values() if h.state is not ShardState.READY
        )
        return router

    # -- health -------------------------------------------------------------------------

    def record_success(self, shard: str, now: float) -> None:
        health = self.health[shard]
        health.failures = 0
        before = health.state
        if health._go("success") is ShardState.READY and before is ShardState.PROBING:
            self._unavailable -= 1

    def record_failure(self, shard: str, now: float) -> bool:
        """Count a failure (a refused connection, a timeout, a lost connection).

        Returns:
            True when this failure ejected the shard.
        """
        health = self.health[shard]
        health.errors += 1
        health.failures += 1
        before = health.state
        if before is ShardState.READY and health.failures >= self.fail_limit:
            health._go("fail-limit")
        else:
            health._go("failure")
        if health.state is ShardState.EJECTED and before is not ShardState.EJECTED:
            health.ejected_until = now + self.retry_after
            health.ejections += 1
            if before is ShardState.READY:
                self._unavailable += 1
            return True
        return False

    def statistics(self, now: float) -> list[ShardStatistics]:
        """A snapshot of every shard, in the order they were given."""
        out = []
        for name in self.placement.shards:
            health = self.health[name]
            retry_in = None
            if health.state is ShardState.EJECTED:
                retry_in = max(0.0, health.ejected_until - now)
            out.append(
                ShardStatistics(
                    name,
                    health.state.value,
                    health.requests,
                    health.errors,
                    health.ejections,
                    health.failures,
                    retry_in,
                )
            )
        return out

    def hottest(self, n: int = 10) -> list[HotKey]:
        return self.hot_keys.hottest(n) if self.hot_keys is not None else []
