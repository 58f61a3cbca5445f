"""The pod file model and its whole-file checks: each bad file is named with path and reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from podkit.errors import ConfigError
from podkit.pods.model import (
    PodFile,
    check_podfile,
    json_schema,
    load_podfile,
    parse_podfile,
    render_template,
    replica_ip,
)

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = {"whoami": "x", "balance": "x", "queue": "x"}


def good() -> dict[str, Any]:
    return {
        "pods": {
            "web": {
                "replicas": 3,
                "containers": {
                    "app": {
                        "component": "whoami",
                        "options": {"listen": "{pod.ip}:8000", "name": "{pod.name}-{pod.replica}"},
                    }
                },
                "ready": {"http": {"port": 8000, "path": "/ready"}},
            },
            "lb": {
                "after": ["web"],
                "containers": {
                    "balance": {
                        "component": "balance",
                        "options": {
                            "listen": "{pod.ip}:8080",
                            "backends": {"pod": "web", "port": 8000},
                        },
                    }
                },
            },
        }
    }


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "pods.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load(tmp_path: Path, data: Any) -> PodFile:
    return load_podfile(
        write(tmp_path, data), state_dir=tmp_path / ".podkit", components=COMPONENTS
    )


def rejected(tmp_path: Path, data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data)
    assert info.value.source == str(tmp_path / "pods.yaml")
    return info.value


def test_a_good_file_loads_with_defaults(tmp_path: Path) -> None:
    podfile = load(tmp_path, good())
    assert podfile.pods["web"].replicas == 3
    assert podfile.pods["web"].restart == "always"
    assert podfile.pods["lb"].replicas == 1
    assert podfile.pods["web"].ready is not None
    assert podfile.pods["web"].ready.interval == 1.0
    assert podfile.order() == ["web", "lb"]
    assert podfile.pod_index("lb") == 2


def test_the_model_is_frozen(tmp_path: Path) -> None:
    podfile = load(tmp_path, good())
    with pytest.raises(ValueError):
        podfile.pods["web"].replicas = 4  # type: ignore[misc]


def test_an_unknown_key_is_named_with_its_path(tmp_path: Path) -> None:
    data = good()
    data["pods"]["web"]["containers"]["app"]["optons"] = {}
    error = rejected(tmp_path, data)
    assert error.path == "pods.web.containers.app.optons"
    assert error.reason == "unknown key"


def test_an_unknown_top_level_key_is_rejected(tmp_path: Path) -> None:
    data = good()
    data["services"] = {}
    assert rejected(tmp_path, data).path == "services"


def test_a_cycle_in_after_is_rejected(tmp_path: Path) -> None:
    data = good()
    data["pods"]["web"]["after"] = ["lb"]
    error = rejected(tmp_path, data)
    assert "cycle" in error.reason
    assert "web -> lb -> web" in error.reason or "lb -> web -> lb" in error.reason
    assert error.path is not None
    assert error.path.endswith(".after")


def test_after_naming_an_unknown_pod_is_rejected(tmp_path: Path) -> None:
    data = good()
    data["pods"]["lb"]["after"] = ["db"]
    error = rejected(tmp_path, data)
    assert error.path == "pods.lb.after[0]"
    assert "unknown pod 'db'" in error.reason


def test_two_containers_binding_one_port_clash(tmp_path: Path) -> None:
    data = good()
    data["pods"]["web"]["containers"]["sidecar"] = {
        "run": [sys.executable, "-c", "pass"],
        "ports": [8000],
    }
    error = rejected(tmp_path, data)
    assert error.path == "pods.web.containers.sidecar.ports[0]"
    assert "port clash: 127.0.1.1:8000" in error.reason
    assert "pods.web.containers.app.options.listen" in error.reason


def test_replicas_on_a_fixed_address_clash(tmp_path: Path) -> None:
    data = good()
    data["pods"]["web"]["containers"]["app"]["options"]["listen"] = "127.0.0.1:8000"
    error = rejected(tmp_path, data)
    assert "port clash: 127.0.0.1:8000" in error.reason
    assert "{pod.ip}" in error.reason


def test_a_fixed_address_with_one_replica_is_fine(tmp_path: Path) -> None:
    data = good()
    data["pods"]["lb"]["containers"]["balance"]["options"]["listen"] = "127.0.0.1:8080"
    assert load(tmp_path, data).pods["lb"].replicas == 1


def test_a_missing_command_is_rejected(tmp_path: Path) -> None:
    data = good()
    data["pods"]["web"]["containers"]["legacy"] = {"run": ["no-such-program-here", "--x"]}
    error = rejected(tmp_path, data)
    assert error.path == "pods.web.containers.legacy.run[0]"
    assert "command not found: 'no-such-program-here'" in error.reason


def test_a_missing_command_after_the_separator_is_rejected(tmp_path: Path) -> None:
    data = good()
    data["pods"]["lb"]["containers"]["balance"]["command"] = ["no-such-job"]
    error = rejected(tmp_path, data)
    assert error.path == "pods.lb.containers.balance.command[0]"


def test_an_unknown_component_is_rejected_with_the_ones_that_exist(tmp_path: Path) -> None:
    data = good()
    data["pods"]["web"]["containers"]["app"]["component"] = "frobnicate --fast"
    error = rejected(tmp_path, data)
    assert error.path == "pods.web.containers.app.component"
    assert "unknown component 'frobnicate'" in error.reason
    assert "whoami" in error.reason


def test_components_default_to_the_commands_of_the_cli(tmp_path: Path) -> None:
    from podkit.cli import COMMANDS

    data = good()
    del data["pods"]["lb"]
    podfile = parse_podfile(data, source="x.yaml")
    check_podfile(podfile, source="x.yaml", state_dir=tmp_path)
    assert "whoami" in COMMANDS


def test_an_unknown_template_field_is_rejected(tmp_path: Path) -> None:
    data = good()
    data["pods"]["web"]["containers"]["app"]["options"]["name"] = "{pod.hostname}"
    error = rejected(tmp_path, data)
    assert error.path == "pods.web.containers.app.options.name"
    assert "{pod.hostname}" in error.reason


def test_a_container_needs_exactly_one_of_component_and_run(tmp_path: Path) -> None:
    data = good()
    data["pods"]["web"]["containers"]["app"]["run"] = ["true"]
    error = rejected(tmp_path, data)
    assert error.path == "pods.web.containers.app"
    assert "exactly one of component or run" in error.reason


def test_a_probe_needs_exactly_one_check(tmp_path: Path) -> None:
    data = good()
    data["pods"]["web"]["ready"]["tcp"] = {"port": 8000}
    assert rejected(tmp_path, data).path == "pods.web.ready"


def test_a_bad_duration_is_rejected(tmp_path: Path) -> None:
    data = good()
    data["pods"]["web"]["ready"]["interval"] = "soon"
    error = rejected(tmp_path, data)
    assert error.path == "pods.web.ready.interval"
    assert "duration" in error.reason


def test_too_many_replicas_are_rejected(tmp_path: Path) -> None:
    data = good()
    data["pods"]["web"]["replicas"] = 300
    assert rejected(tmp_path, data).path == "pods.web.replicas"


def test_a_name_that_is_not_a_dns_label_is_rejected(tmp_path: Path) -> None:
    data = good()
    data["pods"]["Web_1"] = data["pods"].pop("web")
    error = rejected(tmp_path, data)
    assert error.path is not None
    assert error.path.startswith("pods.Web_1")


def test_discovery_of_an_unknown_pod_is_rejected(tmp_path: Path) -> None:
    data = good()
    data["pods"]["lb"]["containers"]["balance"]["options"]["backends"]["pod"] = "api"
    error = rejected(tmp_path, data)
    assert error.path == "pods.lb.containers.balance.options.backends.pod"


def test_invalid_yaml_is_reported_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text("pods:\n  web: [\n")
    with pytest.raises(ConfigError) as info:
        load_podfile(path, state_dir=tmp_path, components=COMPONENTS)
    assert "line" in info.value.reason


def test_an_empty_file_needs_pods(tmp_path: Path) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_podfile(path, state_dir=tmp_path, components=COMPONENTS)
    assert info.value.path == "pods"


def test_templates_render_only_pod_fields() -> None:
    fields = {"ip": "127.0.2.3", "name": "web", "replica": "3", "dir": "/d"}
    assert render_template('{pod.ip}:80 {"json": 1} {pod.name}-{pod.replica}', fields) == (
        '127.0.2.3:80 {"json": 1} web-3'
    )
    assert replica_ip(2, 3) == "127.0.2.3"


def test_the_schema_in_docs_is_the_one_the_model_generates() -> None:
    """docs/podfile.schema.json is regenerated with `podkit up --schema`."""
    on_disk = json.loads((ROOT / "docs" / "podfile.schema.json").read_text())
    assert on_disk == json_schema()


def test_the_schema_forbids_unknown_keys() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Container"]["additionalProperties"] is False
    assert schema["$defs"]["Pod"]["properties"]["restart"]["enum"] == [
        "always",
        "on-failure",
        "never",
    ]


def test_the_whoami_example_is_valid() -> None:
    podfile = load_podfile(ROOT / "examples" / "whoami.yaml", state_dir=ROOT / ".podkit")
    assert podfile.pods["web"].replicas == 3


def test_the_quickstart_example_is_valid_or_names_a_missing_component() -> None:
    """Until every component it uses exists, the only accepted error is an unknown component."""
    path = ROOT / "examples" / "quickstart.yaml"
    error: ConfigError | None = None
    try:
        load_podfile(path, state_dir=ROOT / ".podkit")
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert error.reason.startswith("unknown component"), str(error)
        assert error.path is not None
        assert error.path.endswith(".component")
    # The model alone (no CLI or PATH checks) accepts it today.
    podfile = parse_podfile(yaml.safe_load(path.read_text()), source=str(path))
    assert set(podfile.pods) >= {"web", "lb", "cache"}
    assert podfile.pods["web"].replicas == 3
