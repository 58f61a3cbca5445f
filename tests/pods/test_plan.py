"""From the pod file to argv, environment and discovery files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from podkit.pods.core import ContainerKey
from podkit.pods.model import Discovery, parse_podfile
from podkit.pods.plan import (
    discovery_refs,
    plan_container,
    render_discovery,
    service_addresses,
)

STATE = Path("/state")


def podfile(pods: dict[str, Any]) -> Any:
    return parse_podfile({"pods": pods}, source="test.yaml")


def test_component_options_become_flags_lists_repeat_and_booleans_are_bare() -> None:
    pf = podfile(
        {
            "web": {"replicas": 2, "containers": {"app": {"run": ["true"]}}},
            "queue": {
                "containers": {
                    "work": {
                        "component": "queue work",
                        "args": ["sqlite:///{pod.dir}/q.db", "jobs"],
                        "options": {
                            "max_attempts": 3,
                            "tag": ["a", "{pod.name}"],
                            "verbose": True,
                            "quiet": False,
                            "admin": None,
                            "backends": {"pod": "web", "port": 8000},
                        },
                        "command": ["sh", "-c", 'echo {pod.replica} {"k": 1}'],
                    }
                }
            },
        }
    )
    plan = plan_container(
        pf, ContainerKey("queue", 1, "work"), state_dir=STATE, base_env={}, python="py"
    )
    assert plan.argv == (
        "py",
        "-m",
        "podkit",
        "queue",
        "work",
        "sqlite:////state/pods/queue-1/q.db",
        "jobs",
        "--max-attempts",
        "3",
        "--tag",
        "a",
        "--tag",
        "queue",
        "--verbose",
        "--backends-file",
        "/state/discovery/web-8000.txt",
        "--",
        "sh",
        "-c",
        'echo 1 {"k": 1}',
    )
    assert plan.cwd is None


def test_the_environment_layers_pod_container_and_pod_fields() -> None:
    pf = podfile(
        {
            "web": {
                "env": {"A": "pod", "B": "pod"},
                "containers": {
                    "app": {
                        "run": [sys.executable],
                        "env": {"B": "{pod.ip}", "PEERS": {"pod": "web", "port": 80}},
                        "workdir": "{pod.dir}",
                    }
                },
            }
        }
    )
    plan = plan_container(
        pf, ContainerKey("web", 2, "app"), state_dir=STATE, base_env={"A": "base", "HOME": "/h"}
    )
    assert plan.env["HOME"] == "/h"
    assert plan.env["A"] == "pod"
    assert plan.env["B"] == "127.0.1.2"
    assert plan.env["PEERS"] == "/state/discovery/web-80.txt"
    assert plan.env["PODKIT_POD_REPLICA"] == "2"
    assert plan.env["PODKIT_POD_DIR"] == "/state/pods/web-2"
    assert plan.cwd == "/state/pods/web-2"


def test_another_pods_address_can_be_templated() -> None:
    pf = podfile(
        {
            "lb": {"containers": {"b": {"run": ["true"]}}},
            "cache": {
                "containers": {
                    "c": {"component": "cache", "options": {"upstream": "http://{pods.lb.ip}:80"}}
                }
            },
        }
    )
    plan = plan_container(pf, ContainerKey("cache", 1, "c"), state_dir=STATE, base_env={})
    assert plan.argv[-2:] == ("--upstream", "http://127.0.1.1:80")


def test_the_discovery_file_lists_ready_replicas_one_url_per_line_after_a_comment() -> None:
    pf = podfile(
        {
            "x": {"containers": {"a": {"run": ["true"]}}},
            "web": {"containers": {"a": {"run": ["true"]}}},
        }
    )
    text = render_discovery(pf, Discovery(pod="web", port=8000), (1, 3))
    lines = text.splitlines()
    assert lines[0].startswith("#")
    assert lines[1:] == ["http://127.0.2.1:8000", "http://127.0.2.3:8000"]
    assert render_discovery(pf, Discovery(pod="web", port=8000), ()).count("\n") == 1


def test_probed_pods_and_references_each_get_one_discovery_file() -> None:
    pf = podfile(
        {
            "web": {
                "containers": {"a": {"run": ["true"]}},
                "ready": {"http": {"port": 8000}},
            },
            "lb": {
                "containers": {
                    "b": {
                        "component": "balance",
                        "options": {"backends": {"pod": "web", "port": 8000}},
                        "env": {"ALT": {"pod": "web", "port": 9000}},
                    }
                }
            },
        }
    )
    assert discovery_refs(pf) == [
        Discovery(pod="web", port=8000),
        Discovery(pod="web", port=9000),
    ]


def test_service_addresses_come_from_probe_ports_and_listen_options() -> None:
    pf = podfile(
        {
            "web": {
                "containers": {
                    "a": {"component": "whoami", "options": {"listen": "{pod.ip}:8000"}},
                    "b": {"run": ["true"], "ports": [9000]},
                },
                "ready": {"http": {"port": 8000}},
            }
        }
    )
    assert service_addresses(pf, "web", (1, 2)) == [
        "127.0.1.1:8000",
        "127.0.1.1:9000",
        "127.0.1.2:8000",
        "127.0.1.2:9000",
    ]


def test_a_hop_trusts_the_projects_pods_and_connects_from_its_own_address() -> None:
    pf = parse_podfile(
        {
            "subnet": "127.9.0.0/16",
            "pods": {
                "app": {"containers": {"c": {"run": ["true"]}}},
                "lb": {"containers": {"c": {"component": "balance"}}},
                "own": {
                    "containers": {
                        "c": {
                            "component": "cache",
                            "options": {"trusted_proxy": "10.0.0.0/8", "source-address": False},
                        }
                    }
                },
            },
        },
        source="test.yaml",
    )
    key = ContainerKey("lb", 1, "c")
    plan = plan_container(
        pf,
        key,
        state_dir=STATE,
        base_env={},
        trusted_proxies=pf.networks(),
        source_address=True,
    )
    assert list(plan.argv[4:]) == [
        "--trusted-proxy",
        "127.9.1.0/24",
        "--trusted-proxy",
        "127.9.2.0/24",
        "--trusted-proxy",
        "127.9.3.0/24",
        "--source-address",
        "127.9.2.1",
    ]
    # The file's own choice wins, `false` (leave it out) included.
    own = plan_container(
        pf,
        ContainerKey("own", 1, "c"),
        state_dir=STATE,
        base_env={},
        trusted_proxies=pf.networks(),
        source_address=True,
    )
    assert list(own.argv[4:]) == ["--trusted-proxy", "10.0.0.0/8"]
