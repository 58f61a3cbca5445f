"""``podkit broker`` against real redis-server, PostgreSQL and etcd on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from podkit.ambassador.broker import BrokerTable, EnvSource, Health, parse_map_entry
from podkit.ambassador.broker._auth import RedisCredentials
from podkit.ambassador.broker.app import BrokerOptions, open_broker
from podkit.backends.etcd_client import EtcdClient
from podkit.engines.http import Upstream
from podkit.errors import ConfigError
from podkit.testing import EtcdServer, PostgresServer, RedisServer, free_port
from tests.split.conftest import wait_until

# -- the table (sans-IO) -----------------------------------------------------------------------


def ups(*ports: int) -> tuple[Upstream, ...]:
    return tuple(Upstream("127.0.0.1", p) for p in ports)


def test_every_change_of_environment_or_its_upstreams_is_a_new_epoch() -> None:
    table = BrokerTable({"dev": ups(1), "prod": ups(2, 3)})
    assert table.pick() is None  # no environment yet
    first = table.set_environment("dev")
    assert first is not None
    assert first.epoch == 1
    assert table.pick() == Upstream("127.0.0.1", 1)
    assert table.set_environment("dev") is None
    change = table.set_environment("prod")
    assert change is not None
    assert (change.epoch, change.previous, change.current) == (2, "dev", "prod")
    assert {table.pick() for _ in range(4)} == set(ups(2, 3))
    assert table.set_map({"dev": ups(1), "prod": ups(2, 3)}) is None
    moved = table.set_map({"dev": ups(1), "prod": ups(4)})
    assert moved is not None
    assert moved.epoch == 3
    assert table.pick() == Upstream("127.0.0.1", 4)


def test_an_unknown_environment_has_no_upstream() -> None:
    table = BrokerTable({"dev": ups(1)})
    table.set_environment("staging")
    assert table.unknown_environment == "staging"
    assert table.pick() is None


def test_health_checks_take_a_down_upstream_out_and_bring_it_back() -> None:
    table = BrokerTable({"prod": ups(2, 3)}, rise=2, fall=2)
    table.set_environment("prod")
    down = Upstream("127.0.0.1", 3)
    assert table.probe_result(down, False) is None
    assert table.probe_result(down, False) == (Health.UNKNOWN, Health.DOWN)
    assert {table.pick() for _ in range(6)} == {Upstream("127.0.0.1", 2)}
    table.probe_result(down, True)
    assert table.probe_result(down, True) == (Health.DOWN, Health.UP)
    assert {table.pick() for _ in range(6)} == set(ups(2, 3))


def test_when_every_upstream_is_down_all_are_tried() -> None:
    table = BrokerTable({"prod": ups(2, 3)}, rise=1, fall=1)
    table.set_environment("prod")
    for u in ups(2, 3):
        table.probe_result(u, False)
    assert {table.pick() for _ in range(4)} == set(ups(2, 3))


@pytest.mark.parametrize(
    "text", ["prod", "=127.0.0.1:1", "prod=", "prod=http://127.0.0.1:1", "prod=127.0.0.1"]
)
def test_bad_map_entries(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_map_entry(text)


@pytest.mark.parametrize("text", ["env:", "nothing", "etcd://127.0.0.1:2379", "file:"])
def test_bad_sources(text: str) -> None:
    with pytest.raises(ConfigError):
        EnvSource.parse(text)


def test_credentials_are_a_resp_auth_command() -> None:
    assert RedisCredentials("pw").command() == b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
    assert RedisCredentials("pw", "app").command() == (
        b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$2\r\npw\r\n"
    )


# -- against real servers ----------------------------------------------------------------------


@pytest.fixture
def two_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as dev, RedisServer() as prod:
        yield dev, prod


async def label(server: RedisServer, name: str, *, password: str | None = None) -> None:
    client = aioredis.Redis(host=server.host, port=server.port, password=password)
    try:
        await client.set("env", name)
    finally:
        await client.aclose()


def redis_map(dev: RedisServer, prod: RedisServer) -> dict[str, tuple[Upstream, ...]]:
    return {"dev": ups(dev.port), "prod": ups(prod.port)}


@pytest.fixture
async def env_file(tmp_path: Path) -> Path:
    path = tmp_path / "environment"
    path.write_text("dev\n")
    return path


async def raw_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """GET env on an open connection, in RESP by hand (no client library reconnecting)."""
    writer.write(b"*2\r\n$3\r\nGET\r\n$3\r\nenv\r\n")
    await writer.drain()
    head = await reader.readline()
    assert head.startswith(b"$"), head
    return (await reader.readexactly(int(head[1:]) + 2))[:-2]


async def whose(port: int) -> str:
    """The environment a new connection through the broker reaches."""
    client = aioredis.Redis(host="127.0.0.1", port=port, single_connection_client=True)
    try:
        value = await client.get("env")
    finally:
        await client.aclose()
    return value.decode() if value else "?"


async def test_redis_clients_follow_the_file_and_old_connections_drain_then_close(
    two_redis: tuple[RedisServer, RedisServer], env_file: Path
) -> None:
    dev, prod = two_redis
    await label(dev, "dev")
    await label(prod, "prod")
    options = BrokerOptions(
        source=EnvSource("file", str(env_file)),
        envs=redis_map(dev, prod),
        drain_timeout=1.0,
        source_interval=0.05,
    )
    async with open_broker(options) as (broker, port):
        await wait_until(lambda: broker.table.environment == "dev", what="dev")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await raw_get(reader, writer) == b"dev"
            await asyncio.to_thread(env_file.write_text, "prod\n")
            changed = time.monotonic()
            while await whose(port) != "prod":
                assert time.monotonic() - changed < 1.0, "new connections still reach dev"
                await asyncio.sleep(0.02)
            # The old connection still talks to dev while it drains...
            assert await raw_get(reader, writer) == b"dev"
            assert broker.view()["connections_draining"] == 1
            # ...and is closed once the drain timeout has passed.
            await wait_until(lambda: broker.counts["drain_closed"] == 1, what="drain closed")
            with contextlib.suppress(ConnectionError):
                assert await reader.read() == b""
        finally:
            writer.close()
        assert broker.counts["switches"] == 2


async def test_an_etcd_key_moves_new_connections_within_a_second(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    dev, prod = two_redis
    await label(dev, "dev")
    await label(prod, "prod")
    with EtcdServer() as etcd:
        client = EtcdClient(f"http://{etcd.host}:{etcd.port}")
        try:
            await client.put("/podkit/env", "dev")
            options = BrokerOptions(
                source=EnvSource.parse(f"etcd://{etcd.host}:{etcd.port}/podkit/env"),
                envs=redis_map(dev, prod),
                drain_timeout=5.0,
            )
            async with open_broker(options) as (broker, port):
                await wait_until(lambda: broker.table.environment == "dev", what="dev")
                assert await whose(port) == "dev"
                await client.put("/podkit/env", "prod")
                changed = time.monotonic()
                while await whose(port) != "prod":
                    assert time.monotonic() - changed < 1.0, "new connections still reach dev"
                    await asyncio.sleep(0.02)
        finally:
            await client.aclose()


async def test_the_broker_authenticates_to_redis_for_the_app(
    two_redis: tuple[RedisServer, RedisServer], env_file: Path
) -> None:
    dev, prod = two_redis
    await label(prod, "prod")
    admin = aioredis.Redis(host=prod.host, port=prod.port)
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    await asyncio.to_thread(env_file.write_text, "prod\n")
    good = BrokerOptions(
        source=EnvSource("file", str(env_file)),
        envs=redis_map(dev, prod),
        redis_auth={"prod": RedisCredentials("s3cret")},
    )
    async with open_broker(good) as (broker, port):
        await wait_until(lambda: broker.table.environment == "prod", what="prod")
        assert await whose(port) == "prod"  # the app sent no password
    bad = BrokerOptions(
        source=EnvSource("file", str(env_file)),
        envs=redis_map(dev, prod),
        redis_auth={"prod": RedisCredentials("wrong")},
    )
    async with open_broker(bad) as (broker, port):
        await wait_until(lambda: broker.table.environment == "prod", what="prod")
        with pytest.raises(RedisConnectionError):
            await whose(port)
        assert broker.counts["auth_failures"] >= 1  # the client library retries


@pytest.mark.parametrize("splice_above", [0, 64 * 1024])
async def test_small_commands_and_bulk_values_cross_on_either_data_path(
    two_redis: tuple[RedisServer, RedisServer], env_file: Path, splice_above: int
) -> None:
    """Pipelined small commands and a 1 MiB value arrive intact whether the broker splices
    from the first byte or copies small reads and splices bulk ones."""
    dev, prod = two_redis
    options = BrokerOptions(
        source=EnvSource("file", str(env_file)),
        envs=redis_map(dev, prod),
        splice_above=splice_above,
    )
    async with open_broker(options) as (broker, port):
        await wait_until(lambda: broker.table.environment == "dev", what="dev")
        client = aioredis.Redis(host="127.0.0.1", port=port, single_connection_client=True)
        try:
            value = bytes(range(256)) * 4096
            async with client.pipeline(transaction=False) as pipe:
                for index in range(100):
                    pipe.set(f"k{index}", index)
                pipe.set("bulk", value)
                pipe.get("bulk")
                for index in range(100):
                    pipe.get(f"k{index}")
                answers = await pipe.execute()
            assert answers[101] == value
            assert answers[102:] == [str(index).encode() for index in range(100)]
        finally:
            await client.aclose()


async def test_health_checks_steer_connections_away_from_a_dead_upstream(
    two_redis: tuple[RedisServer, RedisServer], env_file: Path
) -> None:
    dev, _ = two_redis
    await label(dev, "dev")
    dead = free_port()
    options = BrokerOptions(
        source=EnvSource("file", str(env_file)),
        envs={"dev": ups(dev.port, dead)},
        interval=0.05,
    )
    async with open_broker(options) as (broker, port):
        await wait_until(
            lambda: broker.table.health.get(Upstream("127.0.0.1", dead)) is Health.DOWN,
            what="dead upstream down",
        )
        assert [await whose(port) for _ in range(6)] == ["dev"] * 6


@pytest.fixture
def two_postgres() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    with PostgresServer() as a, PostgresServer() as b:
        yield a, b


async def pg_port(port: int) -> int:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    try:
        return int(await conn.fetchval("SHOW port"))
    finally:
        await conn.close()


async def test_postgres_clients_reach_the_current_environment(
    two_postgres: tuple[PostgresServer, PostgresServer], env_file: Path
) -> None:
    dev, prod = two_postgres
    options = BrokerOptions(
        source=EnvSource("file", str(env_file)),
        envs={"dev": ups(dev.port), "prod": ups(prod.port)},
        drain_timeout=0.5,
        source_interval=0.05,
    )
    async with open_broker(options) as (broker, port):
        await wait_until(lambda: broker.table.environment == "dev", what="dev")
        assert await pg_port(port) == dev.port
        held = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres")
        try:
            await asyncio.to_thread(env_file.write_text, "prod")
            await wait_until(lambda: broker.table.environment == "prod", what="prod")
            assert await pg_port(port) == prod.port
            assert int(await held.fetchval("SHOW port")) == dev.port  # still draining
            await wait_until(lambda: broker.counts["drain_closed"] == 1, what="drain closed")
        finally:
            held.terminate()


# -- the command ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--env-from", "env:X"), "give at least one --map"),
        (("--env-from", "nowhere", "--map", "dev=127.0.0.1:1"), "--env-from: expected env:NAME"),
        (("--env-from", "env:X", "--map", "dev"), "--map: expected ENV=HOST:PORT"),
        (("--env-from", "env:X", "--map", "dev=127.0.0.1:1", "--map", "dev=127.0.0.1:2"),
         "mapped twice"),
        (("--env-from", "env:X", "--map", "dev=127.0.0.1:1", "--redis-auth", "dev=secret"),
         "--redis-auth: expected ENV=[USER@]env:VAR"),
        (("--env-from", "env:X", "--map", "dev=127.0.0.1:1", "--redis-auth",
          "prod=env:PODKIT_TEST_UNSET_VARIABLE"), "variable PODKIT_TEST_UNSET_VARIABLE is not set"),
        (("--env-from", "env:X", "--map", "dev=127.0.0.1:1", "--rewrite-host"),
         "--rewrite-host applies to --mode http"),
        (("--env-from", "env:X", "--map", "dev=127.0.0.1:1", "--splice-above", "lots"),
         "--splice-above': expected a size"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line_errors(args: tuple[str, ...], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "podkit", "broker", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("podkit broker: error: ")
    assert message in lines[0]


async def test_http_mode_follows_the_environment_and_rewrites_host(env_file: Path) -> None:
    from podkit.engines.http import Request, Response
    from tests.split.conftest import client, serve_app

    def app(name: str):  # type: ignore[no-untyped-def]
        async def handle(request: Request) -> Response:
            return Response(200, [], f"{name} {request.header('host')}".encode())

        return handle

    async with serve_app(app("dev")) as dev_url, serve_app(app("prod")) as prod_url:
        envs = {"dev": (Upstream.parse(dev_url),), "prod": (Upstream.parse(prod_url),)}
        options = BrokerOptions(
            mode="http",
            source=EnvSource("file", str(env_file)),
            envs=envs,
            rewrite_host=True,
            source_interval=0.05,
        )
        async with open_broker(options) as (broker, port), client(port) as c:
            await wait_until(lambda: broker.table.environment == "dev", what="dev")
            _, _, body = await c.get("/")
            assert body == f"dev {dev_url.removeprefix('http://')}".encode()
            await asyncio.to_thread(env_file.write_text, "prod")
            await wait_until(lambda: broker.table.environment == "prod", what="prod")
            _, _, body = await c.get("/")
            assert body.startswith(b"prod ")


async def test_a_reloaded_map_file_moves_new_connections(
    two_redis: tuple[RedisServer, RedisServer], env_file: Path, tmp_path: Path
) -> None:
    dev, prod = two_redis
    await label(dev, "dev")
    await label(prod, "prod")
    map_file = tmp_path / "map.yaml"
    map_file.write_text(f"dev: 127.0.0.1:{dev.port}\n")
    options = BrokerOptions(
        source=EnvSource("file", str(env_file)),
        envs={"dev": ups(dev.port)},
        map_file=map_file,
        drain_timeout=5.0,
    )
    async with open_broker(options) as (broker, port):
        await wait_until(lambda: broker.table.environment == "dev", what="dev")
        assert await whose(port) == "dev"
        await asyncio.to_thread(map_file.write_text, f"dev: [127.0.0.1:{prod.port}]\n")
        assert broker.reload()
        assert await whose(port) == "prod"
        await asyncio.to_thread(map_file.write_text, "dev: nowhere\n")
        assert not broker.reload()
        assert await whose(port) == "prod"


async def test_the_default_environment_holds_while_the_source_has_none(
    two_redis: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    dev, prod = two_redis
    await label(dev, "dev")
    await label(prod, "prod")
    missing = tmp_path / "environment"
    options = BrokerOptions(
        source=EnvSource("file", str(missing)),
        envs=redis_map(dev, prod),
        default_env="dev",
        source_interval=0.05,
    )
    async with open_broker(options) as (broker, port):
        await wait_until(lambda: broker.table.environment == "dev", what="dev")
        assert await whose(port) == "dev"
        await asyncio.to_thread(missing.write_text, "prod\n")
        await wait_until(lambda: broker.table.environment == "prod", what="prod")
        assert await whose(port) == "prod"
