"""podkit and etcd's own election clients (``etcdctl elect``) take part in one election."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from podkit.backends.etcd_client import b64, prefix_end
from podkit.backends.leases import open_lease_backend
from podkit.election import Election, Term
from podkit.testing import EtcdServer, PodkitProcess, ServerProcess, require_binary
from podkit.testing.net import wait_for
from tests.election.test_contract import wait_until

TTL = 2.0  # roomy: a loaded machine must not make the podkit leader lose its lease here
QUIET_PERIOD = 3.0  # fifteen times the candidates' retry interval: time enough to misbehave


def etcdctl_elect(server: EtcdServer, proposal: str) -> ServerProcess:
    endpoint = f"{server.host}:{server.port}"
    argv = [require_binary("etcdctl"), "--endpoints", endpoint, "elect", "job", proposal]
    return ServerProcess(argv, env={"ETCDCTL_API": "3"}, name="etcdctl-elect")


def leads(process: ServerProcess, proposal: str) -> bool:
    """``etcdctl elect`` prints its key and proposal once it is elected."""
    return proposal in process.output().split()


async def test_podkit_and_etcdctl_elect_never_lead_at_once(etcd_server: EtcdServer) -> None:
    backend = open_lease_backend(etcd_server.url)
    async with backend:
        election = Election(backend, "job", identity="podkit", ttl=TTL)
        led = asyncio.Event()
        leave = asyncio.Event()
        terms: list[Term] = []

        async def podkit_leader() -> None:
            async with election.leadership() as term:
                terms.append(term)
                led.set()
                await leave.wait()

        with etcdctl_elect(etcd_server, "etcdctl-first") as first:
            await wait_until(lambda: leads(first, "etcdctl-first"), timeout=20, what="etcdctl")
            holder = await election.leader()
            assert holder is not None
            assert holder.identity == "etcdctl-first"
            async with asyncio.TaskGroup() as group:
                group.create_task(podkit_leader())
                # While etcdctl leads, the podkit elector waits in line.
                await stays_false(led.is_set, what="podkit leading beside etcdctl")
                first.signal(signal.SIGINT)  # etcdctl resigns on SIGINT
                await asyncio.wait_for(led.wait(), 20)
                assert terms[0].fencing_token > holder.token
                first.wait()

                with etcdctl_elect(etcd_server, "etcdctl-second") as second:
                    # etcdctl queued behind podkit: it must not lead while podkit does.
                    await wait_until(
                        lambda: _candidates(etcd_server) == 2, timeout=20, what="etcdctl to queue"
                    )
                    await stays_false(
                        lambda: leads(second, "etcdctl-second"), what="etcdctl beside podkit"
                    )
                    assert not terms[0].lost.is_set()
                    leave.set()
                    await wait_until(
                        lambda: leads(second, "etcdctl-second"), timeout=20, what="handover"
                    )
                    assert terms[0].lost.is_set()
                    holder = await election.leader()
                    assert holder is not None
                    assert holder.identity == "etcdctl-second"
                    assert holder.token > terms[0].fencing_token


def _candidates(server: EtcdServer) -> int:
    """How many keys the election has (leader plus those waiting in line)."""
    body = {"key": b64("job/"), "range_end": b64(prefix_end("job/")), "count_only": True}
    answer = httpx.post(f"{server.endpoint}/v3/kv/range", json=body, timeout=5).json()
    return int(answer.get("count", 0))


async def stays_false(predicate: Callable[[], bool], *, what: str) -> None:
    """Assert ``predicate`` stays false for the whole quiet period."""
    deadline = time.monotonic() + QUIET_PERIOD
    while time.monotonic() < deadline:
        assert not predicate(), what
        await asyncio.sleep(0.02)


def test_a_podkit_elect_process_and_etcdctl_elect_take_turns_without_overlap(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    """etcdctl leads first; the podkit process's command starts only after etcdctl resigns;
    a second etcdctl waits until the podkit process stops its command and steps down."""
    podkit = PodkitProcess(
        "elect", "--backend", etcd_server.url, "--name", "job", "--ttl", "2s", "--id", "podkit",
        "--", sys.executable, "-m", "podkit.testing.leader_command", str(tmp_path),
    )  # fmt: skip
    with etcdctl_elect(etcd_server, "etcdctl-first") as first:
        wait_for(lambda: leads(first, "etcdctl-first"), timeout=20, what="etcdctl to lead")
        with podkit:
            wait_for(lambda: _candidates(etcd_server) == 2, timeout=20, what="podkit to queue")
            _stays_false_sync(lambda: any(tmp_path.glob("*.start")), what="podkit beside etcdctl")
            first.signal(signal.SIGINT)
            wait_for(lambda: any(tmp_path.glob("*.start")), timeout=20, what="podkit to lead")
            (start,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.start")]
            assert start["identity"] == "podkit"
            with etcdctl_elect(etcd_server, "etcdctl-second") as second:
                wait_for(lambda: _candidates(etcd_server) == 2, timeout=20, what="etcdctl queue")
                _stays_false_sync(
                    lambda: leads(second, "etcdctl-second"), what="etcdctl beside podkit"
                )
                podkit.signal(signal.SIGTERM)
                wait_for(lambda: leads(second, "etcdctl-second"), timeout=20, what="handover")
                assert (tmp_path / f"{start['pid']}.stop").exists()
                assert podkit.wait(20) == 0


def _stays_false_sync(predicate: Callable[[], bool], *, what: str) -> None:
    deadline = time.monotonic() + QUIET_PERIOD
    while time.monotonic() < deadline:
        assert not predicate(), what
        time.sleep(0.02)
