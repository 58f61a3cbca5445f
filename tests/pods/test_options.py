"""Component flags in a pod file are checked by the component's own parser before start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from podkit.errors import ConfigError
from podkit.pods.model import load_podfile
from tests.pods.test_supervisor import podkit_cli


def component(name: str, options: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"pods": {"p": {"containers": {"c": {"component": name, "options": options, **extra}}}}}


def load(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text(yaml.safe_dump(data))
    load_podfile(path, state_dir=tmp_path / ".podkit")


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        (
            component("whoami", {"listn": "{pod.ip}:8000"}),
            "pods.p.containers.c.options.listn",
            "`podkit whoami` has no option --listn (did you mean --listen?)",
        ),
        (
            component(
                "balance",
                {
                    "listen": "{pod.ip}:8080",
                    "backend": "http://127.0.0.1:1",
                    "interval": "5 seconds",
                },
            ),
            "pods.p.containers.c.options.interval",
            "--interval of `podkit balance`: expected a duration such as 500ms, 2s or 1m, "
            "got '5 seconds'",
        ),
        (
            component("cache", {"upstream": "http://127.0.0.1:1", "max-size": "lots"}),
            "pods.p.containers.c.options.max-size",
            "--max-size of `podkit cache`: expected a size",
        ),
        (
            component("queue work", {"max": 0}, args=["sqlite:///q.db", "jobs"], command=["cat"]),
            "pods.p.containers.c.options.max",
            "--max of `podkit queue work`",
        ),
        (
            component("queue", {"visibility": "forever"}, args=["work", "sqlite:///q.db", "jobs"]),
            "pods.p.containers.c.options.visibility",
            "--visibility of `podkit queue work`",
        ),
        (
            component("elect", {"ttl": "2s"}, command=["cat"]),
            "pods.p.containers.c.options",
            "`podkit elect` needs the option --name",
        ),
    ],
)
def test_a_flag_the_component_rejects_is_a_config_error_naming_the_option(
    tmp_path: Path, data: dict[str, Any], path: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data)
    assert info.value.path == path
    assert reason in info.value.reason
    assert not (tmp_path / ".podkit").exists()


def test_flags_the_components_accept_pass_and_nothing_runs(tmp_path: Path) -> None:
    data = component(
        "balance",
        {"listen": "{pod.ip}:8080", "backends": {"pod": "p", "port": 8000}, "interval": "500ms"},
    )
    data["pods"]["p"]["containers"]["j"] = {
        "component": "elect",
        "options": {"name": "job", "ttl": "2s", "backend": "sqlite:///{pod.dir}/e.db"},
        "command": ["cat"],
    }
    load(tmp_path, data)
    assert not (tmp_path / ".podkit").exists()
    assert not Path("e.db").exists()


def test_up_and_up_check_both_reject_a_misspelt_option(tmp_path: Path) -> None:
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump(component("whoami", {"nmae": "x"})))
    for args in (("up", "--check", "pods.yaml"), ("up", "pods.yaml"), ("up", "-d", "pods.yaml")):
        result = podkit_cli(tmp_path, *args)
        assert result.returncode == 2
        assert result.stderr == (
            "podkit up: error: pods.yaml: pods.p.containers.c.options.nmae: "
            "`podkit whoami` has no option --nmae (did you mean --name?)\n"
        )
        assert not (tmp_path / ".podkit").exists()
