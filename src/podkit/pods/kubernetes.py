"""The Kubernetes renderer: a pod file in, manifest dicts out (no I/O).

Theory of operation. A pod of the pod file is already shaped like a Kubernetes pod: containers
that share a network namespace and a directory. :func:`render_kubernetes` maps each piece:

* a pod → a ``Deployment`` (``replicas``), or a ``StatefulSet`` when its containers use
  ``{pod.replica}`` (a stable identity), or a ``Job`` when its ``restart`` is not ``always``;
* a container → a container of that pod; a podkit *sidecar* component (``tls``,
  ``configsync``, ``logship``, ``adapt ...``) beside an application becomes a native sidecar
  (an init container with ``restartPolicy: Always``, KEP-753, Kubernetes >= 1.29), an ordinary
  container below 1.29 (and a note says so);
* templates → what the cluster knows: ``{pod.ip}`` → ``$(PODKIT_POD_IP)`` (the downward API's
  ``status.podIP``), ``{pod.replica}`` → ``$(PODKIT_POD_REPLICA)`` (the StatefulSet's pod
  index), ``{pod.dir}`` → an ``emptyDir`` shared by the pod's containers, ``{pods.NAME.ip}``
  → the Service ``NAME``;
* ``ready`` → a readiness probe; every component's admin endpoint → a liveness probe on
  ``/healthz`` (and a readiness probe on ``/readyz`` when the pod has no ``ready``);
* every port a pod binds → a ``Service`` named after the pod;
* a discovery reference ``{pod: web, port: 8000}`` → a headless Service ``web-headless``
  (its DNS name lists the *ready* pods) and a ``podkit discover`` native sidecar that resolves
  it and keeps the backends file current, as the supervisor does on one machine;
* files named by options or arguments → a ConfigMap (a Secret for keys), mounted read-only;
* an autoscaled ``queue work`` (``min``/``max``) → a KEDA ``ScaledObject`` on the queue depth
  the worker reports on its admin ``/status`` (or a ``HorizontalPodAutoscaler`` on CPU).

Embedded defaults never silently become wrong: an ``sqlite://`` URL, or a file under the
state directory, used by more than one replica is a :class:`~podkit.errors.ConfigError` naming
the field and suggesting ``redis://`` or ``etcd://`` — in a cluster each replica has its own
disk. ``--set`` (:func:`apply_sets`) overrides any value of the file at render time.
"""

from __future__ import annotations

import copy
import math
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from podkit import __version__
from podkit.errors import ConfigError
from podkit.pods.model import (
    BIND_OPTIONS,
    Container,
    Discovery,
    Pod,
    PodFile,
)
from podkit.pods.plan import READYZ_PATH, flag_name

DEFAULT_IMAGE = f"podkit:{__version__}"  # what the repository's Dockerfile builds
DEFAULT_KUBE_VERSION = (1, 35)  # native sidecars are on by default from 1.29
NATIVE_SIDECARS_SINCE = (1, 29)  # KEP-753: init containers with restartPolicy: Always
MIN_KUBE_VERSION = (1, 23)  # autoscaling/v2 (HPA) is GA from 1.23
DEFAULT_MAX_REPLICAS = 10  # the autoscaler's ceiling for queue workers (--max-replicas)
DEFAULT_QUEUE_TARGET = 5  # queue items per worker pod the autoscaler aims for
DEFAULT_CPU_TARGET = 70  # HPA: average CPU utilization (%) it aims for
DEFAULT_DISCOVERY_INTERVAL = "2s"  # how often `podkit discover` resolves a headless Service
HEALTHZ_PATH = "/healthz"
POD_DIR = "/var/run/podkit/pod"  # {pod.dir}: an emptyDir shared by the pod's containers
DISCOVERY_DIR = "/var/run/podkit/discovery"  # backends files written by `podkit discover`
FILES_DIR = "/etc/podkit/files"  # ConfigMaps and Secrets of the files options name
STATE_DIR_PREFIXES = (".podkit/", "./.podkit/")  # one machine's state directory
# Components that sit beside an application: native sidecars when the pod has one.
SIDECAR_COMMANDS = frozenset({"tls", "configsync", "logship", "adapt"})
# Option names whose file is secret: rendered as a Secret, not a ConfigMap.
SECRET_OPTIONS = frozenset({"key", "client-key", "password-file", "token-file"})
LABEL_NAME = "app.kubernetes.io/name"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"  # set on StatefulSet pods (GA in 1.32)
_VAR_REF = re.compile(r"\$\(")
_SET_KEY = re.compile(r"^[A-Za-z0-9_.\-\[\]]+$")
_SET_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_TEMPLATE = re.compile(r"\{(?:pod\.([A-Za-z_]*)|pods\.([A-Za-z0-9_-]*)\.([A-Za-z_]*))\}")

Manifest = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How to render: where, with which image, for which Kubernetes.

    Attributes:
        project: ``app.kubernetes.io/part-of`` of every object (the pod file's stem, or its
            directory's name for a ``pods.yaml``).
        namespace: set on every object; None leaves it to ``kubectl -n`` or kustomize.
        image: the image of podkit containers and of ``run`` containers.
        images: ``POD/CONTAINER`` → image, for a container that needs another image.
        kube_version: the target's ``(major, minor)``.
        autoscaler: ``keda`` (a ScaledObject on the queue depth) or ``hpa`` (CPU).
        max_replicas: the autoscaler's ceiling.
        files: the text of each file the pod file names (path as written → text).
    """

    project: str = "podkit"
    namespace: str | None = None
    image: str = DEFAULT_IMAGE
    images: Mapping[str, str] = field(default_factory=dict)
    kube_version: tuple[int, int] = DEFAULT_KUBE_VERSION
    autoscaler: Literal["keda", "hpa"] = "keda"
    max_replicas: int = DEFAULT_MAX_REPLICAS
    files: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rendering:
    """What :func:`render_kubernetes` returns: the objects, and notes for the reader."""

    manifests: list[Manifest]
    notes: list[str]


def parse_kube_version(text: str) -> tuple[int, int]:
    """``1.29`` → ``(1, 29)``.

    Raises:
        ValueError: not ``MAJOR.MINOR``, or older than :data:`MIN_KUBE_VERSION`.
    """
    match = re.fullmatch(r"\s*v?(\d+)\.(\d+)\s*", text)
    if match is None:
        raise ValueError(f"expected a Kubernetes version MAJOR.MINOR such as 1.29, got {text!r}")
    version = (int(match.group(1)), int(match.group(2)))
    if version < MIN_KUBE_VERSION:
        oldest = ".".join(map(str, MIN_KUBE_VERSION))
        raise ValueError(f"Kubernetes {text.strip()} is too old; podkit renders for {oldest}+")
    return version


# -- --set ---------------------------------------------------------------------------------


def apply_sets(data: Any, sets: Sequence[str], *, source: str) -> Any:
    """Apply ``KEY=VALUE`` overrides to loaded pod-file data (a copy is returned).

    ``KEY`` is a path in the file, ``pods.nightly.containers.job.options.backend`` or
    ``pods.source.containers.lister.args[0]``; ``VALUE`` is read as YAML (``3`` is a number,
    ``redis://redis:6379`` a string). A missing mapping key is created; a list index must exist.

    Raises:
        ConfigError: a malformed override or a path that does not fit the file.
    """
    result = copy.deepcopy(data) if data is not None else {}
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not _SET_KEY.match(key):
            raise ConfigError(
                f"expected KEY=VALUE with KEY a path such as pods.web.replicas, got {item!r}",
                path="--set",
            )
        parts = [
            m.group(1) if m.group(1) is not None else int(m.group(2))
            for m in _SET_PART.finditer(key)
        ]
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = result
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = _path_text(parts[: i + 1])
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise ConfigError(
                        f"--set {key}: {where} is not an item of a list in the file",
                        source=source,
                        path=where,
                    )
                if last:
                    node[part] = value
                else:
                    node = node[part]
                continue
            if not isinstance(node, dict):
                raise ConfigError(
                    f"--set {key}: {_path_text(parts[:i]) or 'the file'} is not a mapping",
                    source=source,
                    path=where,
                )
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return result


def _path_text(parts: Sequence[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


# -- the sqlite-in-a-cluster check -----------------------------------------------------------


def _container_strings(pod_name: str, pod: Pod) -> Iterator[tuple[str, str, str]]:
    """``(container, path, text)`` of every templated string of a pod's containers."""
    for cname, c in pod.containers.items():
        base = f"pods.{pod_name}.containers.{cname}"
        for i, arg in enumerate(c.run or []):
            yield cname, f"{base}.run[{i}]", arg
        for i, arg in enumerate(c.args):
            yield cname, f"{base}.args[{i}]", arg
        for key, value in c.options.items():
            items = value if isinstance(value, list) else [value]
            for j, item in enumerate(items):
                if isinstance(item, str):
                    suffix = f"[{j}]" if isinstance(value, list) else ""
                    yield cname, f"{base}.options.{key}{suffix}", item
        for i, arg in enumerate(c.command):
            yield cname, f"{base}.command[{i}]", arg
        for key, env in c.env.items():
            if isinstance(env, str):
                yield cname, f"{base}.env.{key}", env
    for key, env in pod.env.items():
        yield "", f"pods.{pod_name}.env.{key}", env


def _shared_state(text: str) -> str | None:
    """The database or file ``text`` names on this machine's disk, or None.

    ``sqlite://`` URLs and paths under the state directory; a path under ``{pod.dir}`` is each
    replica's own and is not shared.
    """
    value = text.strip()
    if "{pod.dir}" in value:
        return None
    if value.startswith("sqlite:"):
        return value
    if "=sqlite:" in value:  # KEY=sqlite:///... (a pipeline file's --set store=...)
        return value[value.index("=sqlite:") + 1 :]
    for prefix in STATE_DIR_PREFIXES:
        if value.startswith(prefix) or f" {prefix}" in value or f"={prefix}" in value:
            return value
    return None


def check_cluster_state(podfile: PodFile, *, source: str, autoscaled: set[str]) -> None:
    """Refuse embedded state that more than one replica would share in a cluster.

    On one machine, replicas share the disk, so ``sqlite:///.podkit/elect.db`` is one database
    for all of them; in a cluster each pod has its own disk and each replica would get its own
    database: two leaders, two queues. A state used by one replica of one pod is left alone.

    Raises:
        ConfigError: naming the first field that shares, and what to use instead.
    """
    users: dict[str, list[tuple[str, str]]] = {}
    for pod_name, pod in podfile.pods.items():
        for _cname, where, text in _container_strings(pod_name, pod):
            state = _shared_state(text)
            if state is not None:
                users.setdefault(state, []).append((pod_name, where))
    for state, uses in users.items():
        pods = list(dict.fromkeys(user for user, _ in uses))
        counts: list[str] = []
        for user in pods:
            n = podfile.pods[user].replicas
            if user in autoscaled:
                counts.append(f"the autoscaled replicas of {user}")
            else:
                counts.append(f"{n} replicas of {user}" if n != 1 else user)
        total = sum(podfile.pods[p].replicas for p in pods)
        if total <= 1 and not any(p in autoscaled for p in pods):
            continue
        where = uses[0][1]
        kind = "an sqlite database" if state.startswith("sqlite:") else "a file on this machine"
        url = "redis://redis:6379/0"
        raise ConfigError(
            f"{state!r} is {kind} shared by {' and '.join(counts)}; in a cluster every replica has "
            f"its own disk, so each would get its own copy: use a redis:// or etcd:// URL "
            f"(e.g. --set {where}={url})",
            source=source,
            path=where,
        )


# -- templates -----------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Keep a literal ``$(`` from Kubernetes' variable expansion in command and args."""
    return _VAR_REF.sub("$$(", text)


def _render(text: str, pod_name: str) -> str:
    """A pod-file string for a cluster: ``$(PODKIT_POD_IP)`` and friends (see the module)."""

    def field_(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return {
                "ip": "$(PODKIT_POD_IP)",
                "name": pod_name,
                "replica": "$(PODKIT_POD_REPLICA)",
                "dir": POD_DIR,
            }.get(match.group(1), match.group(0))
        return match.group(2)  # {pods.NAME.ip}: the Service NAME

    return _TEMPLATE.sub(field_, _escape(text))


def _uses_replica(pod: Pod) -> bool:
    return any("{pod.replica}" in text for _c, _w, text in _container_strings("", pod))


# -- the renderer ----------------------------------------------------------------------------


@dataclass(slots=True)
class _PodContext:
    name: str
    pod: Pod
    labels: dict[str, str]
    volumes: list[dict[str, Any]] = field(default_factory=list)
    file_keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (kind, key)


def render_kubernetes(podfile: PodFile, options: RenderOptions, *, source: str) -> Rendering:
    """Render a checked pod file as Kubernetes objects.

    Args:
        podfile: a pod file (after :func:`apply_sets` and the model's checks).
        options: image, namespace, target version, autoscaler, file contents.
        source: the file's name, for errors.

    Returns:
        The objects in apply order (ConfigMaps and Secrets, Services, workloads,
        autoscalers) and notes worth printing.

    Raises:
        ConfigError: state shared by replicas (see :func:`check_cluster_state`), a discovery
            reference to a pod without a Service port, or a pod with nothing to run.
    """
    notes: list[str] = []
    autoscaled = {
        name
        for name, pod in podfile.pods.items()
        if any(_autoscaled_worker(c) for c in pod.containers.values())
    }
    check_cluster_state(podfile, source=source, autoscaled=autoscaled)
    native = options.kube_version >= NATIVE_SIDECARS_SINCE
    discovered: dict[str, set[int]] = {}
    for pod in podfile.pods.values():
        for c in pod.containers.values():
            for value in [*c.options.values(), *c.env.values()]:
                if isinstance(value, Discovery):
                    discovered.setdefault(value.pod, set()).add(value.port)
    configs: list[Manifest] = []
    services: list[Manifest] = []
    workloads: list[Manifest] = []
    scalers: list[Manifest] = []
    for name, pod in podfile.pods.items():
        labels = {LABEL_NAME: name, LABEL_PART_OF: options.project}
        ctx = _PodContext(name, pod, labels)
        configs += _files(ctx, options)
        stateful = _uses_replica(pod)
        ports = _pod_ports(pod)
        if ports:
            services.append(_service(ctx, options, ports, headless=False))
        if stateful or name in discovered:
            missing = sorted(discovered.get(name, set()) - set(ports))
            if missing:
                raise ConfigError(
                    f"service discovery of pod {name!r} on port {missing[0]}: the pod does not "
                    "bind that port (give it in `ports`, `listen` or `admin`)",
                    source=source,
                    path=f"pods.{name}",
                )
            services.append(_service(ctx, options, ports, headless=True))
        spec, sidecars_demoted = _pod_spec(ctx, podfile, options, native=native)
        if sidecars_demoted:
            notes.append(
                f"{name}: Kubernetes {_version_text(options.kube_version)} has no native "
                f"sidecars (1.29+): {', '.join(sidecars_demoted)} rendered as ordinary "
                "containers, so they start and stop with the application, not around it"
            )
        workloads.append(_workload(ctx, options, spec, stateful=stateful))
        for cname, c in pod.containers.items():
            if c.run is not None and f"{name}/{cname}" not in options.images:
                notes.append(
                    f"{name}/{cname} runs {c.run[0]!r} from the image {options.image}: build "
                    f"an image that has it (`podkit render image --apt PACKAGE`) or give "
                    f"--container-image {name}/{cname}=IMAGE"
                )
        if name in autoscaled:
            scalers.append(_autoscaler(ctx, options, source=source))
    if autoscaled and options.autoscaler == "keda":
        notes.append(
            f"{', '.join(sorted(autoscaled))}: a KEDA ScaledObject scales the workers on the "
            "queue depth; install KEDA (keda.sh) in the cluster, or render with "
            "--autoscaler hpa"
        )
    manifests = [*configs, *services, *workloads, *scalers]
    if options.namespace is not None:
        for manifest in manifests:
            manifest["metadata"]["namespace"] = options.namespace
    return Rendering(manifests, notes)


def _version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _metadata(ctx: _PodContext, name: str) -> dict[str, Any]:
    return {"name": name, "labels": {**ctx.labels, LABEL_MANAGED_BY: "podkit"}}


def _autoscaled_worker(c: Container) -> bool:
    return (
        c.component is not None
        and c.component.split()[:2] == ["queue", "work"]
        and c.options.get("max") not in (None, False)
    )


def _is_sidecar(c: Container) -> bool:
    return c.component is not None and c.component.split()[0] in SIDECAR_COMMANDS


def _bound_ports(c: Container) -> list[tuple[str, int]]:
    """``(what, port)`` a container binds: ``listen``/``admin`` options and ``ports``."""
    found: list[tuple[str, int]] = []
    for key in BIND_OPTIONS:
        value = c.options.get(key)
        if isinstance(value, str):
            _host, sep, port = value.rpartition(":")
            if sep and port.isdigit() and int(port) > 0:
                found.append((key, int(port)))
    found += [("port", port) for port in c.ports]
    return found


def _pod_ports(pod: Pod) -> list[int]:
    ports = [port for c in pod.containers.values() for _what, port in _bound_ports(c)]
    if pod.ready is not None:
        ports.append(pod.ready.port)
    return sorted(set(ports))


def _port_name(port: int) -> str:
    return f"p{port}"  # IANA_SVC_NAME: at most 15 characters, unique in the pod


def _service(
    ctx: _PodContext, options: RenderOptions, ports: list[int], *, headless: bool
) -> Manifest:
    name = f"{ctx.name}-headless" if headless else ctx.name
    spec: dict[str, Any] = {
        "selector": dict(ctx.labels),
        "ports": [
            {"name": _port_name(p), "port": p, "targetPort": p, "protocol": "TCP"} for p in ports
        ],
    }
    if headless:
        # Its DNS name answers with the address of every *ready* pod: what discovery follows.
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = False
        if not ports:
            spec["ports"] = [{"name": "none", "port": 1, "protocol": "TCP"}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(ctx, name), "spec": spec}


def _file_key(path: str) -> str:
    key = re.sub(r"[^A-Za-z0-9._-]", "-", posixpath.normpath(path).lstrip("./"))
    return key.strip(".-") or "file"


def _files(ctx: _PodContext, options: RenderOptions) -> list[Manifest]:
    """A ConfigMap (and a Secret) of the files the pod's options and arguments name."""
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for c in ctx.pod.containers.values():
        named: list[tuple[str, str]] = [("", a) for a in c.args]
        for key, value in c.options.items():
            items = value if isinstance(value, list) else [value]
            named += [(key, item) for item in items if isinstance(item, str)]
        for key, text in named:
            if text not in options.files or text in ctx.file_keys:
                continue
            kind = "secret" if key.replace("_", "-") in SECRET_OPTIONS else "config"
            file_key = _file_key(text)
            ctx.file_keys[text] = (kind, file_key)
            (secret if kind == "secret" else plain)[file_key] = options.files[text]
    manifests: list[Manifest] = []
    if plain:
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _metadata(ctx, f"{ctx.name}-files"),
                "data": dict(sorted(plain.items())),
            }
        )
        ctx.volumes.append({"name": "files", "configMap": {"name": f"{ctx.name}-files"}})
    if secret:
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": _metadata(ctx, f"{ctx.name}-secrets"),
                "type": "Opaque",
                "stringData": dict(sorted(secret.items())),
            }
        )
        ctx.volumes.append({"name": "secrets", "secret": {"secretName": f"{ctx.name}-secrets"}})
    return manifests


def _file_path(ctx: _PodContext, text: str) -> str | None:
    found = ctx.file_keys.get(text)
    if found is None:
        return None
    kind, key = found
    return f"{FILES_DIR}/{'secrets' if kind == 'secret' else 'config'}/{key}"


def _discovery_file(ref: Discovery) -> str:
    return f"{DISCOVERY_DIR}/{ref.pod}-{ref.port}.txt"


def _args(ctx: _PodContext, c: Container) -> list[str]:
    args = [_file_path(ctx, a) or _render(a, ctx.name) for a in c.args]
    for key, value in c.options.items():
        if isinstance(value, Discovery):
            args += [flag_name(key) + "-file", _discovery_file(value)]
            continue
        for item in value if isinstance(value, list) else [value]:
            if item is None or item is False:
                continue
            if item is True:
                args.append(flag_name(key))
            else:
                text = str(item)
                args += [flag_name(key), _file_path(ctx, text) or _render(text, ctx.name)]
    if c.command:
        args += ["--", *(_render(a, ctx.name) for a in c.command)]
    return args


def _env(ctx: _PodContext, c: Container, *, stateful: bool) -> list[dict[str, Any]]:
    replica_ref = (
        {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}
        if stateful
        else {"fieldPath": "metadata.name"}
    )
    env: list[dict[str, Any]] = [
        {"name": "PODKIT_POD_NAME", "value": ctx.name},
        {"name": "PODKIT_POD_REPLICA", "valueFrom": {"fieldRef": replica_ref}},
        {"name": "PODKIT_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "PODKIT_POD_DIR", "value": POD_DIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    merged: dict[str, str] = {k: _render(v, ctx.name) for k, v in ctx.pod.env.items()}
    for key, value in c.env.items():
        merged[key] = (
            _discovery_file(value) if isinstance(value, Discovery) else _render(value, ctx.name)
        )
    env += [{"name": k, "value": v} for k, v in merged.items()]
    return env


def _probe_for(
    port: int, path: str | None, *, period: float, timeout: float, failures: int
) -> dict[str, Any]:
    action: dict[str, Any] = (
        {"httpGet": {"path": path, "port": port}}
        if path is not None
        else {"tcpSocket": {"port": port}}
    )
    return {
        **action,
        "periodSeconds": max(1, math.ceil(period)),
        "timeoutSeconds": max(1, math.ceil(timeout)),
        "failureThreshold": failures,
    }


def _container(
    ctx: _PodContext, cname: str, c: Container, options: RenderOptions, *, stateful: bool
) -> dict[str, Any]:
    image = options.images.get(f"{ctx.name}/{cname}", options.image)
    spec: dict[str, Any] = {"name": cname, "image": image}
    if c.component is not None:
        spec["command"] = ["podkit", *c.component.split()]
        args = _args(ctx, c)
        if args:
            spec["args"] = args
    else:
        assert c.run is not None
        spec["command"] = [_render(a, ctx.name) for a in c.run]
    spec["env"] = _env(ctx, c, stateful=stateful)
    if c.workdir is not None:
        spec["workingDir"] = _render(c.workdir, ctx.name)
    ports = sorted({port for _what, port in _bound_ports(c)})
    if ports:
        spec["ports"] = [
            {"name": _port_name(p), "containerPort": p, "protocol": "TCP"} for p in ports
        ]
    ready = ctx.pod.ready
    admin = dict(_bound_ports(c)).get("admin") if c.component is not None else None
    if ready is not None and _binds_probe_port(ctx.pod, c):
        path = ready.http.path if ready.http is not None else None
        spec["readinessProbe"] = _probe_for(
            ready.port,
            path,
            period=ready.interval,
            timeout=ready.timeout,
            failures=ready.failures,
        )
    elif ready is None and admin is not None:
        spec["readinessProbe"] = _probe_for(admin, READYZ_PATH, period=1.0, timeout=1.0, failures=3)
    if admin is not None:
        # /healthz answers 200 while the event loop runs: a hung process is restarted.
        spec["livenessProbe"] = _probe_for(
            admin, HEALTHZ_PATH, period=10.0, timeout=1.0, failures=3
        )
    mounts: list[dict[str, Any]] = [{"name": "pod-dir", "mountPath": POD_DIR}]
    if any(isinstance(v, Discovery) for v in [*c.options.values(), *c.env.values()]):
        mounts.append({"name": "discovery", "mountPath": DISCOVERY_DIR, "readOnly": True})
    used = {kind for text, (kind, _key) in ctx.file_keys.items() if _names_file(c, text)}
    if "config" in used:
        mounts.append({"name": "files", "mountPath": f"{FILES_DIR}/config", "readOnly": True})
    if "secret" in used:
        mounts.append({"name": "secrets", "mountPath": f"{FILES_DIR}/secrets", "readOnly": True})
    spec["volumeMounts"] = mounts
    if options.autoscaler == "hpa" and _autoscaled_worker(c):
        spec["resources"] = {"requests": {"cpu": "100m"}}  # HPA's utilization needs a request
    return spec


def _names_file(c: Container, text: str) -> bool:
    values: list[object] = list(c.args)
    for value in c.options.values():
        values += value if isinstance(value, list) else [value]
    return text in values


def _binds_probe_port(pod: Pod, c: Container) -> bool:
    assert pod.ready is not None
    if any(port == pod.ready.port for _w, port in _bound_ports(c)):
        return True
    # No container says it binds the port: the first one that is not a sidecar is probed.
    if any(
        pod.ready.port == p for other in pod.containers.values() for _w, p in _bound_ports(other)
    ):
        return False
    first = next(iter(x for x in pod.containers.values() if not _is_sidecar(x)), None)
    return first is c


def _discover_sidecar(
    ref: Discovery, options: RenderOptions, service_namespace: str | None
) -> dict[str, Any]:
    host = f"{ref.pod}-headless"
    if service_namespace is not None:
        host += f".{service_namespace}.svc"
    return {
        "name": f"discover-{ref.pod}-{ref.port}"[:63],
        "image": options.image,
        "command": ["podkit", "discover"],
        "args": [
            "--dns",
            host,
            "--port",
            str(ref.port),
            "--scheme",
            ref.scheme,
            "--out",
            _discovery_file(ref),
            "--interval",
            DEFAULT_DISCOVERY_INTERVAL,
        ],
        "volumeMounts": [{"name": "discovery", "mountPath": DISCOVERY_DIR}],
    }


def _pod_spec(
    ctx: _PodContext, podfile: PodFile, options: RenderOptions, *, native: bool
) -> tuple[dict[str, Any], list[str]]:
    pod = ctx.pod
    stateful = _uses_replica(pod)
    apps = [n for n, c in pod.containers.items() if not _is_sidecar(c)]
    init: list[dict[str, Any]] = []
    main: list[dict[str, Any]] = []
    demoted: list[str] = []
    refs: list[Discovery] = []
    for c in pod.containers.values():
        for value in [*c.options.values(), *c.env.values()]:
            if isinstance(value, Discovery) and value not in refs:
                refs.append(value)
    for ref in refs:
        sidecar = _discover_sidecar(ref, options, options.namespace)
        if native:
            sidecar["restartPolicy"] = "Always"
            init.append(sidecar)
        else:
            demoted.append(sidecar["name"])
            main.append(sidecar)
    for cname, c in pod.containers.items():
        container = _container(ctx, cname, c, options, stateful=stateful)
        if _is_sidecar(c) and apps:
            if native:
                container["restartPolicy"] = "Always"
                init.append(container)
                continue
            demoted.append(cname)
        main.append(container)
    volumes: list[dict[str, Any]] = [{"name": "pod-dir", "emptyDir": {}}]
    if refs:
        volumes.append({"name": "discovery", "emptyDir": {}})
    volumes += ctx.volumes
    spec: dict[str, Any] = {}
    if init:
        spec["initContainers"] = init
    spec["containers"] = main
    spec["volumes"] = volumes
    spec["terminationGracePeriodSeconds"] = max(1, math.ceil(pod.stop_grace))
    if pod.restart != "always":
        spec["restartPolicy"] = "Never" if pod.restart == "never" else "OnFailure"
    return spec, demoted


def _workload(
    ctx: _PodContext, options: RenderOptions, spec: dict[str, Any], *, stateful: bool
) -> Manifest:
    template = {"metadata": {"labels": dict(ctx.labels)}, "spec": spec}
    if ctx.pod.restart != "always":
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": _metadata(ctx, ctx.name),
            "spec": {
                "completions": ctx.pod.replicas,
                "parallelism": ctx.pod.replicas,
                "template": template,
            },
        }
    body: dict[str, Any] = {
        "replicas": ctx.pod.replicas,
        "selector": {"matchLabels": dict(ctx.labels)},
        "template": template,
    }
    if stateful:
        body["serviceName"] = f"{ctx.name}-headless"
        body["podManagementPolicy"] = "Parallel"  # replicas start together, as with `podkit up`
        return {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": _metadata(ctx, ctx.name),
            "spec": body,
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(ctx, ctx.name),
        "spec": body,
    }


def _autoscaler(ctx: _PodContext, options: RenderOptions, *, source: str) -> Manifest:
    kind = "StatefulSet" if _uses_replica(ctx.pod) else "Deployment"
    target = {"apiVersion": "apps/v1", "kind": kind, "name": ctx.name}
    low = max(1, ctx.pod.replicas)
    high = max(low, options.max_replicas)
    if options.autoscaler == "hpa":
        return {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(ctx, ctx.name),
            "spec": {
                "scaleTargetRef": target,
                "minReplicas": low,
                "maxReplicas": high,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {
                                "type": "Utilization",
                                "averageUtilization": DEFAULT_CPU_TARGET,
                            },
                        },
                    }
                ],
            },
        }
    worker = next((n, c) for n, c in ctx.pod.containers.items() if _autoscaled_worker(c))
    admin = dict(_bound_ports(worker[1])).get("admin")
    if admin is None:
        raise ConfigError(
            "an autoscaled worker needs an admin endpoint in a cluster: KEDA reads the queue "
            'depth from its GET /status (add `admin: "{pod.ip}:9000"`, or render with '
            "--autoscaler hpa)",
            source=source,
            path=f"pods.{ctx.name}.containers.{worker[0]}.options.admin",
        )
    host = ctx.name if options.namespace is None else f"{ctx.name}.{options.namespace}.svc"
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(ctx, ctx.name),
        "spec": {
            "scaleTargetRef": {"kind": kind, "name": ctx.name},
            "minReplicaCount": low,
            "maxReplicaCount": high,
            "triggers": [
                {
                    "type": "metrics-api",
                    "metadata": {
                        "url": f"http://{host}:{admin}/status",
                        "valueLocation": "depth",
                        "targetValue": str(DEFAULT_QUEUE_TARGET),
                    },
                }
            ],
        },
    }


# -- output ----------------------------------------------------------------------------------


def manifest_filename(manifest: Manifest) -> str:
    """``web.deployment.yaml``: one file per object in ``--out DIR``."""
    return f"{manifest['metadata']['name']}.{manifest['kind'].lower()}.yaml"


def kustomization(manifests: Sequence[Manifest], *, namespace: str | None) -> Manifest:
    """The ``kustomization.yaml`` that lists every file, for ``kubectl apply -k DIR``."""
    body: Manifest = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
    }
    if namespace is not None:
        body["namespace"] = namespace
    body["resources"] = [manifest_filename(m) for m in manifests]
    return body


def dump_yaml(manifest: Manifest) -> str:
    """One object as YAML, keys in the order they were built."""
    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False, width=100)


def dump_stream(manifests: Sequence[Manifest]) -> str:
    """Every object as one multi-document YAML stream (``kubectl apply -f -``)."""
    return "".join(f"---\n{dump_yaml(m)}" for m in manifests)
