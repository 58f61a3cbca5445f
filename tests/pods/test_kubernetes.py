"""``podkit render kubernetes``: every example renders, validates strictly against the three
newest Kubernetes versions, matches its golden file and builds with ``kubectl kustomize``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from podkit.errors import ConfigError
from podkit.pods.image import render_dockerfile
from podkit.pods.kubernetes import (
    RenderOptions,
    apply_sets,
    check_cluster_state,
    parse_kube_version,
    render_kubernetes,
)
from podkit.pods.model import parse_podfile

ROOT = Path(__file__).resolve().parents[2]
# Each examples/*.yaml, and the flagship: examples/search/pods.yaml.
EXAMPLES = [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / "examples" / "search" / "pods.yaml"]
GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("PODKIT_UPDATE_GOLDEN") == "1"  # rewrite the golden files
REDIS = "redis://redis:6379/0"
SEARCH_DATA = "/data/search"  # the flagship's indexes: a volume its pods share in a cluster
# The quick start keeps its state in SQLite on one machine; a cluster needs a server.
SETS: dict[str, list[str]] = {
    "quickstart": [
        f"pods.nightly.containers.job.options.backend={REDIS}",
        f"pods.source.containers.lister.args[0]={REDIS}",
        f"pods.workers.containers.work.args[0]={REDIS}",
    ],
    "search": [
        *(
            f"pods.{pod}.containers.leaf.options.index={SEARCH_DATA}/{shard}"
            for pod, shard in [
                ("leaf0", "index/shard-0"),
                ("leaf1", "index/shard-1"),
                ("leaf2", "index/shard-2"),
                ("twin", "index/shard-0"),
                ("leafnext", "next/shard-0"),
            ]
        ),
        f"pods.index.containers.build.options.out={SEARCH_DATA}/index",
        f"pods.index.containers.build-next.options.out={SEARCH_DATA}/next",
        f"pods.reindex.env.SEARCH_DATA={SEARCH_DATA}",
        f"pods.pipeline.env.SEARCH_DATA={SEARCH_DATA}",
        f"pods.feed.containers.lister.args[0]={REDIS}",
        f"pods.ingest.containers.work.args[0]={REDIS}",
        f"pods.ingest.env.SEARCH_STORE={REDIS}",
        *(
            f"pods.pipeline.containers.{stage}.options.set[0]=store={REDIS}"
            for stage in ("normalise", "shard", "stage")
        ),
        f"pods.reindex.containers.job.options.backend={REDIS}",
    ],
}
# KEDA's ScaledObject is a custom resource the Kubernetes schemas do not know: the fields
# this renderer writes, from KEDA's CRD (keda.sh/v1alpha1), checked strictly here.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def newest_versions(count: int = 3) -> list[str]:
    """The ``count`` newest minor versions whose schemas kubernetes-validate ships."""
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    found = set()
    for entry in schemas.iterdir():
        match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+-local-strict", entry.name)
        if match:
            found.add((int(match.group(1)), int(match.group(2))))
    return [f"{major}.{minor}.0" for major, minor in sorted(found)[-count:]]


VERSIONS = newest_versions()


def podkit(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def example_name(path: Path) -> str:
    """whoami for examples/whoami.yaml; search for examples/search/pods.yaml."""
    return path.parent.name if path.stem == "pods" else path.stem


def render_example(path: Path, *extra: str) -> tuple[list[dict[str, Any]], str]:
    sets = [arg for s in SETS.get(example_name(path), []) for arg in ("--set", s)]
    result = podkit("render", "kubernetes", str(path.relative_to(ROOT)), *sets, *extra)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None], result.stderr


def validate_strictly(manifest: dict[str, Any], version: str) -> None:
    if manifest["kind"] == "ScaledObject":
        import jsonschema

        jsonschema.validate(manifest, SCALED_OBJECT_SCHEMA)
        return
    kubernetes_validate.validate(manifest, version, strict=True)


def test_three_kubernetes_versions_are_tested() -> None:
    """The schemas of three minor versions, all at least 1.29 (native sidecars), are here."""
    assert len(VERSIONS) == 3
    assert all(parse_kube_version(v.rsplit(".", 1)[0]) >= (1, 29) for v in VERSIONS)


@pytest.mark.parametrize("example", EXAMPLES, ids=example_name)
def test_every_example_validates_strictly_against_the_three_newest_versions(
    example: Path,
) -> None:
    manifests, _notes = render_example(example)
    assert manifests
    for manifest in manifests:
        for version in VERSIONS:
            validate_strictly(manifest, version)


def test_a_field_kubernetes_does_not_know_fails_strict_validation() -> None:
    """The strict check is real: an unknown field is an error, not ignored."""
    manifests, _ = render_example(ROOT / "examples" / "whoami.yaml")
    workload = next(m for m in manifests if m["kind"] in ("Deployment", "StatefulSet"))
    workload["spec"]["template"]["spec"]["containers"][0]["probe"] = {"path": "/ready"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("example", EXAMPLES, ids=example_name)
def test_every_example_matches_its_golden_file(example: Path) -> None:
    result_manifests, _ = render_example(example, "--namespace", "demo")
    text = yaml.safe_dump_all(result_manifests, sort_keys=False)
    golden = GOLDEN / f"{example_name(example)}.yaml"
    if UPDATE_GOLDEN:
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file; run with PODKIT_UPDATE_GOLDEN=1 to write {golden}"
    assert text == golden.read_text(), f"{golden} differs; review and PODKIT_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("example", EXAMPLES, ids=example_name)
def test_every_example_builds_with_kubectl_kustomize(example: Path, tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: `make setup` installs it (scripts/ensure-system.sh)"
    out = tmp_path / "manifests"
    sets = [arg for s in SETS.get(example_name(example), []) for arg in ("--set", s)]
    result = podkit(
        "render", "kubernetes", str(example), *sets, "--namespace", "demo", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    built = subprocess.run(
        [kubectl, "kustomize", str(out)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    objects = [d for d in yaml.safe_load_all(built.stdout) if d]
    files = sorted(p.name for p in out.iterdir() if p.name != "kustomization.yaml")
    assert len(objects) == len(files)
    assert all(o["metadata"]["namespace"] == "demo" for o in objects)


def test_the_quick_start_on_sqlite_is_refused_naming_the_field_and_the_fix() -> None:
    result = podkit("render", "kubernetes", "examples/quickstart.yaml")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith(
        "podkit render kubernetes: error: examples/quickstart.yaml: "
        "pods.nightly.containers.job.options.backend: 'sqlite:///.podkit/elect.db' is an "
        "sqlite database shared by 2 replicas of nightly"
    )
    assert "use a redis:// or etcd:// URL" in line
    assert "--set pods.nightly.containers.job.options.backend=redis://" in line


def test_a_queue_shared_by_two_pods_is_refused_at_its_first_use() -> None:
    result = podkit(
        "render",
        "kubernetes",
        "examples/quickstart.yaml",
        "--set",
        f"pods.nightly.containers.job.options.backend={REDIS}",
    )
    assert result.returncode == 2
    assert "pods.source.containers.lister.args[0]: 'sqlite:///.podkit/queue.db'" in result.stderr
    assert "shared by source and the autoscaled replicas of workers" in result.stderr


def test_one_replica_with_its_own_sqlite_file_is_fine() -> None:
    podfile = parse_podfile(
        {
            "pods": {
                "solo": {
                    "containers": {
                        "job": {
                            "component": "elect",
                            "options": {"backend": "sqlite:///.podkit/e.db", "name": "x"},
                            "command": ["true"],
                        }
                    }
                },
                "many": {
                    "replicas": 3,
                    "containers": {
                        "job": {
                            "component": "elect",
                            "options": {"backend": "sqlite:///{pod.dir}/e.db", "name": "y"},
                            "command": ["true"],
                        }
                    },
                },
            }
        },
        source="t.yaml",
    )
    check_cluster_state(podfile, source="t.yaml", autoscaled=set())


def test_a_file_in_the_state_directory_shared_by_replicas_is_refused() -> None:
    podfile = parse_podfile(
        {
            "pods": {
                "web": {
                    "replicas": 2,
                    "containers": {"app": {"run": ["tail", "-F", ".podkit/shared.log"]}},
                }
            }
        },
        source="t.yaml",
    )
    with pytest.raises(ConfigError, match=r"pods.web.containers.app.run\[2\]: '.podkit/shared"):
        check_cluster_state(podfile, source="t.yaml", autoscaled=set())


def _spec(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = next(m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name)
    spec: dict[str, Any] = found["spec"]
    return spec


def test_sidecar_components_are_native_sidecars_from_1_29() -> None:
    manifests, _ = render_example(ROOT / "examples" / "adapters.yaml")
    pod = _spec(manifests, "Deployment", "cache")["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["redis"]
    sidecars = pod["initContainers"]
    assert [c["name"] for c in sidecars] == ["metrics", "health"]
    assert all(c["restartPolicy"] == "Always" for c in sidecars)
    health = sidecars[1]
    assert health["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8086}


def test_below_1_29_sidecars_are_ordinary_containers_and_a_note_says_so() -> None:
    manifests, notes = render_example(ROOT / "examples" / "adapters.yaml", "--kube-version", "1.28")
    pod = _spec(manifests, "Deployment", "cache")["template"]["spec"]
    assert "initContainers" not in pod
    assert [c["name"] for c in pod["containers"]] == ["redis", "metrics", "health"]
    assert "Kubernetes 1.28 has no native sidecars (1.29+): metrics, health" in notes
    for manifest in manifests:
        kubernetes_validate.validate(manifest, "1.28.0", strict=True)


def test_a_balancer_follows_a_headless_service_through_a_discover_sidecar() -> None:
    manifests, _ = render_example(ROOT / "examples" / "quickstart.yaml")
    headless = _spec(manifests, "Service", "web-headless")
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is False
    lb = _spec(manifests, "Deployment", "lb")["template"]["spec"]
    discover = lb["initContainers"][0]
    assert discover["command"] == ["podkit", "discover"]
    assert discover["args"][:2] == ["--dns", "web-headless"]
    out = discover["args"][discover["args"].index("--out") + 1]
    balance = lb["containers"][0]
    assert balance["args"][balance["args"].index("--backends-file") + 1] == out


def test_probes_come_from_ready_and_the_admin_endpoints() -> None:
    manifests, _ = render_example(ROOT / "examples" / "quickstart.yaml")
    web = _spec(manifests, "StatefulSet", "web")["template"]["spec"]["containers"][0]
    assert web["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8000}
    assert web["readinessProbe"]["periodSeconds"] == 1
    cache = _spec(manifests, "Deployment", "cache")["template"]["spec"]["containers"][0]
    assert cache["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9000}
    assert cache["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9000}


def test_templates_become_the_downward_api_and_service_names() -> None:
    manifests, _ = render_example(ROOT / "examples" / "quickstart.yaml")
    cache = _spec(manifests, "Deployment", "cache")["template"]["spec"]["containers"][0]
    assert "$(PODKIT_POD_IP):8080" in cache["args"]
    assert "http://lb:8080" in cache["args"]
    env = {e["name"]: e for e in cache["env"]}
    assert env["PODKIT_POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # A literal $( in a command is escaped from Kubernetes' own expansion.
    source = _spec(manifests, "Deployment", "source")["template"]["spec"]["containers"][0]
    assert any("$$(date +%s)" in arg for arg in source["args"])


def test_replica_numbers_make_a_stateful_set_and_elect_keeps_its_shared_backend() -> None:
    manifests, _ = render_example(ROOT / "examples" / "quickstart.yaml")
    nightly = _spec(manifests, "StatefulSet", "nightly")
    assert nightly["serviceName"] == "nightly-headless"
    job = nightly["template"]["spec"]["containers"][0]
    assert job["args"][job["args"].index("--backend") + 1] == REDIS
    assert job["args"][job["args"].index("--id") + 1] == "nightly-$(PODKIT_POD_REPLICA)"


def test_autoscaled_workers_get_a_keda_scaled_object_or_an_hpa() -> None:
    manifests, notes = render_example(ROOT / "examples" / "quickstart.yaml", "--max-replicas", "7")
    scaled = _spec(manifests, "ScaledObject", "workers")
    assert scaled["maxReplicaCount"] == 7
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "metrics-api"
    assert trigger["metadata"]["url"] == "http://workers:9000/status"
    assert trigger["metadata"]["valueLocation"] == "depth"
    assert "install KEDA" in notes
    manifests, _ = render_example(ROOT / "examples" / "quickstart.yaml", "--autoscaler", "hpa")
    hpa = _spec(manifests, "HorizontalPodAutoscaler", "workers")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "workers",
    }
    for manifest in manifests:
        validate_strictly(manifest, VERSIONS[-1])


def test_files_named_by_options_become_a_config_map_and_keys_a_secret(tmp_path: Path) -> None:
    (tmp_path / "site.crt").write_text("CERT\n")
    (tmp_path / "site.key").write_text("KEY\n")
    (tmp_path / "pods.yaml").write_text(
        """
pods:
  app:
    containers:
      web: {component: whoami, options: {listen: "{pod.ip}:8000"}}
      tls:
        component: tls
        options:
          listen: "{pod.ip}:8443"
          cert: site.crt
          key: site.key
          upstream: "http://{pod.ip}:8000"
"""
    )
    result = podkit("render", "kubernetes", "pods.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifests = [d for d in yaml.safe_load_all(result.stdout) if d]
    config = next(m for m in manifests if m["kind"] == "ConfigMap")
    secret = next(m for m in manifests if m["kind"] == "Secret")
    assert config["data"] == {"site.crt": "CERT\n"}
    assert secret["stringData"] == {"site.key": "KEY\n"}
    tls = _spec(manifests, "Deployment", "app")["template"]["spec"]["initContainers"][0]
    assert tls["args"][tls["args"].index("--cert") + 1] == "/etc/podkit/files/config/site.crt"
    assert tls["args"][tls["args"].index("--key") + 1] == "/etc/podkit/files/secrets/site.key"
    for manifest in manifests:
        validate_strictly(manifest, VERSIONS[-1])


def test_set_overrides_values_and_refuses_paths_that_do_not_fit() -> None:
    data = {"pods": {"web": {"replicas": 1, "containers": {"a": {"run": ["x", "y"]}}}}}
    changed = apply_sets(
        data, ["pods.web.replicas=4", "pods.web.containers.a.run[1]=z"], source="f"
    )
    assert changed["pods"]["web"]["replicas"] == 4
    assert changed["pods"]["web"]["containers"]["a"]["run"] == ["x", "z"]
    assert data["pods"]["web"]["replicas"] == 1  # the input is not changed
    with pytest.raises(ConfigError, match=r"run\[5\] is not an item"):
        apply_sets(data, ["pods.web.containers.a.run[5]=z"], source="f")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_sets(data, ["pods.web.replicas"], source="f")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kube-version", "1.x"], "expected a Kubernetes version MAJOR.MINOR"),
        (["--kube-version", "1.20"], "too old"),
        (["--namespace", "Bad_NS"], "expected a DNS label"),
        (["--set", "nokey"], "expected KEY=VALUE"),
        (["--container-image", "web=x"], "expected POD/CONTAINER=IMAGE"),
        (["--container-image", "web/nope=x"], "no container 'web/nope'"),
    ],
)
def test_bad_render_options_are_one_line_errors(args: list[str], message: str) -> None:
    result = podkit("render", "kubernetes", "examples/whoami.yaml", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("podkit render kubernetes: error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_model_error_after_set_names_the_file_and_field() -> None:
    result = podkit("render", "kubernetes", "examples/whoami.yaml", "--set", "pods.web.replicas=x")
    assert result.returncode == 2
    assert "examples/whoami.yaml: pods.web.replicas: expected a whole number" in result.stderr


def test_other_options_render_with_the_default_options() -> None:
    podfile = parse_podfile(
        {"pods": {"once": {"restart": "never", "containers": {"a": {"run": ["true"]}}}}},
        source="t.yaml",
    )
    rendering = render_kubernetes(podfile, RenderOptions(), source="t.yaml")
    job = rendering.manifests[0]
    assert job["kind"] == "Job"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    kubernetes_validate.validate(job, VERSIONS[-1], strict=True)
    assert any("runs 'true' from the image" in note for note in rendering.notes)


def test_render_image_writes_a_dockerfile_on_the_podkit_image(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("flask\n")
    result = podkit(
        "render",
        "image",
        "--requirements",
        "requirements.txt",
        "--apt",
        "redis-server",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "FROM podkit:0.1.0" in lines
    assert "RUN pip install --no-cache-dir -r requirements.txt" in lines
    assert any("apt-get install -y --no-install-recommends redis-server" in x for x in lines)
    assert lines[-1] == "USER 10001"
    bad = podkit("render", "image", "--apt", "x; rm -rf /", cwd=tmp_path)
    assert bad.returncode == 2
    assert "not a package name" in bad.stderr
    with pytest.raises(ValueError, match="not a package name"):
        render_dockerfile(pip=["$(evil)"])


def test_the_repository_dockerfile_builds_the_default_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir '.[redis]'" in text
    assert "podkit:0.1.0" in text
