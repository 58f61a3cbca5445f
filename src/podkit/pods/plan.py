"""From the pod file to what a process needs: argv, environment, directory (pure functions).

A component container ``{component: NAME, args: [...], options: {...}, command: [...]}`` runs
``python -m podkit NAME ARGS... --key value ... -- COMMAND...``. Option keys become flags
(``drain_timeout`` and ``drain-timeout`` both give ``--drain-timeout``); a list repeats the
flag; ``true`` gives a bare flag; ``false`` and ``null`` leave it out; a discovery reference
``{pod: web, port: 8000}`` under key ``backends`` gives ``--backends-file FILE``. Every string
is rendered with the replica's ``{pod.ip}``, ``{pod.name}``, ``{pod.replica}``, ``{pod.dir}``
(and ``{pods.NAME.ip}``, the address of replica 1 of pod NAME).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from podkit.errors import ConfigError
from podkit.pods.core import ContainerKey
from podkit.pods.model import (
    Container,
    Discovery,
    PodFile,
    admin_probes,
    discovery_path,
    render_template,
    template_fields,
)
from podkit.runtime.config import parse_hostport

# Trusted by each component behind another: the supervisor's own pods (see plan_container).
TRUSTED_PROXY_OPTION = "trusted-proxy"
SOURCE_ADDRESS_OPTION = "source-address"  # ... and connects from its own pod's address
READYZ_PATH = "/readyz"  # the runtime's readiness route on every component's admin endpoint
DISCOVERY_HEADER = "# podkit discovery: ready replicas of pod {pod} on port {port}, one per line\n"


@dataclass(frozen=True, slots=True)
class ContainerPlan:
    """What the shell needs to start one container."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None


def sets_option(container: Container, option: str) -> bool:
    """Whether the container's options name ``option`` (as ``a-b`` or ``a_b``)."""
    return any(flag_name(key) == flag_name(option) for key in container.options)


def flag_name(key: str) -> str:
    """``drain_timeout`` → ``--drain-timeout``."""
    return "--" + key.replace("_", "-")


def option_argv(container: Container, fields: Mapping[str, str], *, state_dir: Path) -> list[str]:
    """The ``--flags`` of a component container's options, rendered for one replica."""
    argv: list[str] = []
    for key, value in container.options.items():
        if isinstance(value, Discovery):
            argv += [flag_name(key) + "-file", str(discovery_path(state_dir, value))]
            continue
        for item in value if isinstance(value, list) else [value]:
            if item is None or item is False:
                continue
            if item is True:
                argv.append(flag_name(key))
            else:
                argv += [flag_name(key), render_template(str(item), fields)]
    return argv


def plan_container(
    podfile: PodFile,
    key: ContainerKey,
    *,
    state_dir: Path,
    base_env: Mapping[str, str],
    python: str = sys.executable,
    trusted_proxies: Sequence[str] = (),
    source_address: bool = False,
) -> ContainerPlan:
    """The argv, environment and working directory of one container of one replica.

    For a component container the options do not say otherwise (the file's choice wins,
    ``false`` included): ``trusted_proxies`` become ``--trusted-proxy NET`` flags, and
    ``source_address`` gives ``--source-address`` the replica's own address, so the
    component's upstream connections leave from its pod as they would in a cluster.

    The environment is ``base_env``, then the pod's ``env``, then the container's (a discovery
    reference there gives the discovery file's path), then ``PODKIT_POD_NAME``,
    ``PODKIT_POD_REPLICA``, ``PODKIT_POD_IP`` and ``PODKIT_POD_DIR``.
    """
    pod = podfile.pods[key.pod]
    container = pod.containers[key.container]
    fields = template_fields(podfile, key.pod, key.replica, state_dir=state_dir)

    def render(text: str) -> str:
        return render_template(text, fields)

    if container.run is not None:
        argv = [render(a) for a in container.run]
    else:
        assert container.component is not None
        argv = [python, "-m", "podkit", *container.component.split()]
        argv += [render(a) for a in container.args]
        argv += option_argv(container, fields, state_dir=state_dir)
        if trusted_proxies and not sets_option(container, TRUSTED_PROXY_OPTION):
            for network in trusted_proxies:
                argv += [flag_name(TRUSTED_PROXY_OPTION), network]
        if source_address and not sets_option(container, SOURCE_ADDRESS_OPTION):
            argv += [flag_name(SOURCE_ADDRESS_OPTION), fields["ip"]]
        if container.command:
            argv += ["--", *(render(a) for a in container.command)]
    env = dict(base_env)
    env["PYTHONUNBUFFERED"] = "1"  # Python children stream their logs line by line
    env.update({k: render(v) for k, v in pod.env.items()})
    env.update(
        {
            k: str(discovery_path(state_dir, v)) if isinstance(v, Discovery) else render(v)
            for k, v in container.env.items()
        }
    )
    env.update(
        {
            "PODKIT_POD_NAME": key.pod,
            "PODKIT_POD_REPLICA": str(key.replica),
            "PODKIT_POD_IP": fields["ip"],
            "PODKIT_POD_DIR": fields["dir"],
        }
    )
    cwd = render(container.workdir) if container.workdir is not None else None
    return ContainerPlan(tuple(argv), env, cwd)


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """One readiness check of a replica: a TCP connect (``path`` None) or ``GET path``.

    Attributes:
        what: where it comes from in the pod file (``pods.web.ready``,
            ``pods.lb.containers.balance.options.admin``).
    """

    host: str
    port: int
    path: str | None
    what: str


def probe_targets(
    podfile: PodFile, pod: str, replica: int, *, state_dir: Path
) -> list[ProbeTarget]:
    """What decides that one replica is ready: the pod's ``ready`` probe or, without one,
    ``GET /readyz`` on the admin endpoint of each component container that has one."""
    spec = podfile.pods[pod]
    ip = podfile.address(pod, replica)
    if spec.ready is not None:
        path = spec.ready.http.path if spec.ready.http is not None else None
        return [ProbeTarget(ip, spec.ready.port, path, f"pods.{pod}.ready")]
    fields = template_fields(podfile, pod, replica, state_dir=state_dir)
    targets = []
    for name, admin in admin_probes(spec).items():
        try:
            address = parse_hostport(render_template(admin, fields), field="admin")
        except ConfigError:
            continue  # the component itself rejects it, and says so
        host = ip if address.host in ("0.0.0.0", "") else address.host
        if address.port:
            where = f"pods.{pod}.containers.{name}.options.admin"
            targets.append(ProbeTarget(host, address.port, READYZ_PATH, where))
    return targets


def admin_address(podfile: PodFile, key: ContainerKey, *, state_dir: Path) -> str | None:
    """``HOST:PORT`` of a component container's admin endpoint (its ``admin`` option,
    rendered for the replica), or None."""
    container = podfile.pods[key.pod].containers[key.container]
    admin = container.options.get("admin")
    if container.component is None or not isinstance(admin, str):
        return None
    fields = template_fields(podfile, key.pod, key.replica, state_dir=state_dir)
    try:
        address = parse_hostport(render_template(admin, fields), field="admin")
    except ConfigError:
        return None
    if not address.port:
        return None
    host = podfile.address(key.pod, key.replica) if address.host == "0.0.0.0" else address.host
    return f"{host}:{address.port}"


def discovery_refs(podfile: PodFile) -> list[Discovery]:
    """The discovery files to keep current, in file order.

    Every reference the file makes, and one per pod with a readiness probe, on the probe's
    port (so a program outside the pods can follow the ready replicas too).
    """
    refs: list[Discovery] = []
    for name, pod in podfile.pods.items():
        if pod.ready is not None:
            implicit = Discovery(pod=name, port=pod.ready.port)
            if implicit not in refs:
                refs.append(implicit)
    for pod in podfile.pods.values():
        for container in pod.containers.values():
            for value in [*container.options.values(), *container.env.values()]:
                if isinstance(value, Discovery) and value not in refs:
                    refs.append(value)
    return refs


def render_discovery(podfile: PodFile, ref: Discovery, replicas: tuple[int, ...]) -> str:
    """The text of a discovery file: a comment line, then one URL per ready replica."""
    lines = [DISCOVERY_HEADER.format(pod=ref.pod, port=ref.port)]
    lines += [f"{ref.scheme}://{podfile.address(ref.pod, r)}:{ref.port}\n" for r in replicas]
    return "".join(lines)


def service_addresses(podfile: PodFile, pod: str, replicas: tuple[int, ...]) -> list[str]:
    """Where a pod's replicas serve, for the ``ready`` line ``podkit up`` prints.

    Per replica: the rendered ``listen`` options, then the declared ``ports``, then the probe
    port (often an admin endpoint), each address once.
    """
    spec = podfile.pods[pod]
    addresses: list[str] = []
    for replica in replicas:
        ip = podfile.address(pod, replica)
        fields = template_fields(podfile, pod, replica, state_dir=Path())
        found: list[str] = []
        for container in spec.containers.values():
            listen = container.options.get("listen")
            if isinstance(listen, str):
                found.append(render_template(listen, fields))
        for container in spec.containers.values():
            found += [f"{ip}:{port}" for port in container.ports]
        if spec.ready is not None:
            found.append(f"{ip}:{spec.ready.port}")
        addresses += [a for a in dict.fromkeys(found) if a not in addresses]
    return addresses
