"""The pod file: pods, their containers, readiness probes, restart policy and order.

A pod file is YAML with one top-level key, ``pods``: a mapping from pod name to a pod. A pod
runs ``replicas`` copies of its ``containers``; the containers of one replica share a loopback
address (``127.0.P.R``, P the pod's position in the file, R the replica number from 1) and a
directory. Each container is either a podkit component (``component: NAME`` with ``options``
that become ``--flags``) or any program (``run: [argv...]``).

Two layers of checks, both before anything starts:

* the model (pydantic, ``extra="forbid"``, frozen): the shape of the file, unknown keys,
  value ranges, one of ``component``/``run``;
* :func:`check_podfile`: what needs the whole file or the machine — ``after`` naming unknown
  pods or forming a cycle, discovery references to unknown pods, two containers binding the
  same ``ip:port``, a program not found on ``PATH``, a component the CLI does not have, an
  unknown ``{pod.*}`` template field.

Every error is a :class:`~podkit.errors.ConfigError` naming the file, the path inside it
(``pods.web.containers.app.run[0]``) and the reason.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from podkit.errors import ConfigError
from podkit.runtime.config import (
    load_yaml,
    parse_duration,
    parse_hostport,
    validation_error_to_config_error,
)

MAX_PODS = 254  # the third octet of 127.0.P.R; 0 is left out so no pod shares 127.0.0.1
MAX_REPLICAS = 254  # the fourth octet of 127.0.P.R (1-254; 0 and 255 read as network/broadcast)
MAX_NAME_LENGTH = 63  # a DNS label, so the same names render to Kubernetes
DEFAULT_STOP_GRACE = 15.0  # above the runtime's 10 s drain timeout, so components drain fully
DEFAULT_PROBE_INTERVAL = 1.0
DEFAULT_PROBE_TIMEOUT = 1.0
DEFAULT_PROBE_FAILURES = 3  # Kubernetes' failureThreshold default
DEFAULT_SUBNET = "127.0.0.0/16"  # pods at 127.0.P.R; another project on the machine picks 127.N

NAME_PATTERN = r"^[a-z]([a-z0-9-]*[a-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)
TEMPLATE_FIELDS = ("ip", "name", "replica", "dir")
# {pod.FIELD} of this replica, or {pods.NAME.ip}: the address of replica 1 of another pod.
_TEMPLATE_RE = re.compile(r"\{(?:pod\.([A-Za-z_]*)|pods\.([A-Za-z0-9_-]*)\.([A-Za-z_]*))\}")
# Option keys whose values are addresses the component binds (checked for clashes).
BIND_OPTIONS = ("listen", "admin")
_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"},
        {"type": "number", "minimum": 0},
    ],
    "description": "A duration: 500ms, 2s, 1m, 1h, or a number of seconds.",
}


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ConfigError as exc:
        raise ValueError(exc.reason) from exc


Duration = Annotated[float, BeforeValidator(_duration), WithJsonSchema(_DURATION_SCHEMA)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH)]
Port = Annotated[int, Field(ge=1, le=65535)]
Scalar = str | int | float | bool


# How errors describe the patterns and union members of the model (see parse_podfile).
_WORDS = {
    NAME_PATTERN: "a name of lowercase letters, digits and '-' that starts with a letter",
    "^/": "a path starting with /",
    "Discovery": "a discovery reference {pod: NAME, port: N}",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpCheck(_Model):
    """``GET path`` on the replica's address; any 2xx or 3xx answer passes."""

    port: Port
    path: str = Field(default="/", pattern=r"^/")


class TcpCheck(_Model):
    """A TCP connection to the replica's address passes."""

    port: Port


class ReadyProbe(_Model):
    """How the supervisor decides that a pod replica is ready (exactly one of http, tcp)."""

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    interval: Duration = DEFAULT_PROBE_INTERVAL
    timeout: Duration = DEFAULT_PROBE_TIMEOUT
    failures: int = Field(
        default=DEFAULT_PROBE_FAILURES,
        ge=1,
        le=100,
        description="Consecutive failed probes before a ready replica counts as not ready.",
    )

    @model_validator(mode="after")
    def _one_check(self) -> ReadyProbe:
        if (self.http is None) == (self.tcp is None):
            raise ValueError("give exactly one of http or tcp")
        return self

    @property
    def port(self) -> int:
        check = self.http or self.tcp
        assert check is not None
        return check.port


class Discovery(_Model):
    """The ready replicas of another pod, as a file of URLs the supervisor keeps current.

    As the value of option ``KEY`` it is passed as ``--KEY-file PATH``; the file holds one
    ``SCHEME://127.0.P.R:PORT`` line per ready replica (lines starting with ``#`` are comments)
    and is replaced atomically whenever a replica becomes ready, fails or is scaled away.
    """

    pod: Name
    port: Port
    scheme: Literal["http", "https", "tcp"] = "http"


OptionValue = Discovery | Scalar | list[Scalar] | None


class Container(_Model):
    """One process of a pod replica: a podkit component or any program."""

    component: str | None = Field(
        default=None,
        description=(
            "A podkit command, e.g. 'whoami', 'queue work' or 'pipeline work'; runs "
            "`python -m podkit`."
        ),
    )
    run: list[str] | None = Field(
        default=None, min_length=1, description="The argv of any program (argv[0] on PATH)."
    )
    args: list[str] = Field(
        default_factory=list, description="Positional arguments of the component."
    )
    options: dict[str, OptionValue] = Field(
        default_factory=dict,
        description=(
            "Component flags: key → --key VALUE; a list repeats the flag; true → bare --key; "
            "false or null → left out; {pod, port} → --key-file FILE (service discovery)."
        ),
    )
    command: list[str] = Field(
        default_factory=list,
        description="A program the component runs, passed after `--` (elect, queue work).",
    )
    env: dict[str, str | Discovery] = Field(
        default_factory=dict,
        description="Environment; a {pod, port} value gives the path of a discovery file.",
    )
    ports: list[Port] = Field(
        default_factory=list, description="Ports the container binds on the pod's address."
    )
    workdir: str | None = Field(
        default=None, description="Working directory (default: where `podkit up` runs)."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Container:
        if (self.component is None) == (self.run is None):
            raise ValueError("give exactly one of component or run")
        if self.run is not None and (self.args or self.options or self.command):
            raise ValueError("args, options and command belong to a component, not to run")
        if self.component is not None and not self.component.split():
            raise ValueError("component must name a podkit command")
        return self


class Pod(_Model):
    """A group of containers replicated together; each replica has its own address and dir."""

    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    containers: dict[Name, Container] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    ready: ReadyProbe | None = None
    restart: Literal["always", "on-failure", "never"] = "always"
    after: list[Name] = Field(
        default_factory=list, description="Pods whose replicas must all be ready first."
    )
    stop_grace: Duration = Field(
        default=DEFAULT_STOP_GRACE, description="Time between SIGTERM and SIGKILL on stop."
    )


def parse_subnet(value: Any) -> str:
    """``127.N.0.0/16`` in its canonical form.

    Raises:
        ValueError: not a /16 block of the loopback network.
    """
    text = str(value).strip()
    match = _SUBNET_RE.match(text)
    if match is None or int(match.group(1)) > 255:
        raise ValueError(f"expected a loopback block 127.N.0.0/16 (N 0-255), got {value!r}")
    return f"127.{int(match.group(1))}.0.0/16"


_SUBNET_RE = re.compile(r"^127\.(\d{1,3})\.0\.0/16$")
Subnet = Annotated[
    str,
    BeforeValidator(parse_subnet),
    WithJsonSchema({"type": "string", "pattern": r"^127\.\d{1,3}\.0\.0/16$"}),
]


class PodFile(_Model):
    """The whole pod file."""

    pods: dict[Name, Pod] = Field(min_length=1, max_length=MAX_PODS)
    subnet: Subnet = Field(
        default=DEFAULT_SUBNET,
        description=(
            "The loopback block of this project: replica R of the P-th pod gets 127.N.P.R. "
            "Give each project on one machine its own N."
        ),
    )

    @property
    def block(self) -> int:
        """The second octet of every address of this pod file (N of ``127.N.P.R``)."""
        return int(self.subnet.split(".")[1])

    def networks(self) -> list[str]:
        """The address block of each pod, ``127.N.P.0/24``: every replica it can have."""
        return [f"127.{self.block}.{self.pod_index(name)}.0/24" for name in self.pods]

    def address(self, pod: str, replica: int) -> str:
        """The loopback address of replica ``replica`` (from 1) of pod ``pod``."""
        return replica_ip(self.pod_index(pod), replica, block=self.block)

    def pod_index(self, name: str) -> int:
        """The pod's position in the file, from 1: the third octet of its addresses."""
        return list(self.pods).index(name) + 1

    def order(self) -> list[str]:
        """The pods in start order: every pod after the pods it names in ``after``.

        Ties keep the file's order. Assumes :func:`check_podfile` found no cycle.
        """
        done: list[str] = []
        placed: set[str] = set()
        while len(done) < len(self.pods):
            for name, pod in self.pods.items():
                if name not in placed and all(dep in placed for dep in pod.after):
                    done.append(name)
                    placed.add(name)
                    break
            else:
                raise ConfigError("pods.after forms a cycle")
        return done


def admin_probes(pod: Pod) -> dict[str, str]:
    """The containers whose admin ``/readyz`` decides readiness, with their ``admin`` option.

    Only for a pod without a ``ready`` probe: each podkit component given ``admin: HOST:PORT``
    is ready when its ``GET /readyz`` answers 200.
    """
    if pod.ready is not None:
        return {}
    return {
        name: admin
        for name, c in pod.containers.items()
        if c.component is not None and isinstance(admin := c.options.get("admin"), str)
    }


def replica_ip(pod_index: int, replica: int, *, block: int = 0) -> str:
    """The loopback address of replica ``replica`` (from 1) of the pod at ``pod_index``, in
    the block ``127.BLOCK.0.0/16``."""
    return f"127.{block}.{pod_index}.{replica}"


def render_template(text: str, fields: Mapping[str, str]) -> str:
    """Replace ``{pod.ip}``, ``{pod.name}``, ``{pod.replica}``, ``{pod.dir}`` and
    ``{pods.NAME.ip}`` in ``text``.

    Other braces are left alone, so JSON or shell text passes through.

    Raises:
        KeyError: an unknown field.
    """

    def field(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return fields[match.group(1)]
        return fields[f"pods.{match.group(2)}.{match.group(3)}"]

    return _TEMPLATE_RE.sub(field, text)


def template_fields(podfile: PodFile, pod: str, replica: int, *, state_dir: Path) -> dict[str, str]:
    """The values of ``{pod.*}`` for one replica, and ``pods.NAME.ip`` for every pod."""
    fields = {
        "ip": podfile.address(pod, replica),
        "name": pod,
        "replica": str(replica),
        "dir": str(replica_dir(state_dir, pod, replica)),
    }
    for name in podfile.pods:
        fields[f"pods.{name}.ip"] = podfile.address(name, 1)
    return fields


def replica_dir(state_dir: Path, pod: str, replica: int) -> Path:
    """The directory shared by the containers of one pod replica."""
    return state_dir / "pods" / f"{pod}-{replica}"


def discovery_path(state_dir: Path, ref: Discovery) -> Path:
    """The file listing the ready replicas of ``ref.pod`` on ``ref.port``."""
    return state_dir / "discovery" / f"{ref.pod}-{ref.port}.txt"


# -- whole-file checks ---------------------------------------------------------------------


def _template_strings(pod_name: str, pod: Pod) -> Iterator[tuple[str, str]]:
    base = f"pods.{pod_name}"
    for key, value in pod.env.items():
        yield f"{base}.env.{key}", value
    for cname, c in pod.containers.items():
        cbase = f"{base}.containers.{cname}"
        for i, arg in enumerate(c.run or []):
            yield f"{cbase}.run[{i}]", arg
        for i, arg in enumerate(c.args):
            yield f"{cbase}.args[{i}]", arg
        for i, arg in enumerate(c.command):
            yield f"{cbase}.command[{i}]", arg
        for key, env_value in c.env.items():
            if isinstance(env_value, str):
                yield f"{cbase}.env.{key}", env_value
        if c.workdir is not None:
            yield f"{cbase}.workdir", c.workdir
        for key, option in c.options.items():
            items = option if isinstance(option, list) else [option]
            for item in items:
                if isinstance(item, str):
                    yield f"{cbase}.options.{key}", item


def _find_cycle(podfile: PodFile) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dep in podfile.pods[name].after:
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[name] = 2
        return None

    for name in podfile.pods:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def _program_found(program: str, *, path: str | None, cwd: Path) -> bool:
    if "/" in program:
        candidate = Path(program) if os.path.isabs(program) else cwd / program
        return candidate.is_file() and os.access(candidate, os.X_OK)
    return shutil.which(program, path=path) is not None


def bound_addresses(
    podfile: PodFile, pod_name: str, replicas: int, *, state_dir: Path, first: int = 1
) -> Iterator[tuple[str, str]]:
    """``(ip:port, path)`` for every address replicas ``first``..``replicas`` of a pod bind.

    Declared ``ports`` bind on the replica's address; ``listen`` and ``admin`` options are
    rendered and parsed as ``HOST:PORT``. Port 0 (the kernel picks) never clashes.
    """
    pod = podfile.pods[pod_name]
    for replica in range(first, replicas + 1):
        fields = template_fields(podfile, pod_name, replica, state_dir=state_dir)
        for cname, c in pod.containers.items():
            cbase = f"pods.{pod_name}.containers.{cname}"
            for i, port in enumerate(c.ports):
                yield f"{fields['ip']}:{port}", f"{cbase}.ports[{i}]"
            for key in BIND_OPTIONS:
                value = c.options.get(key)
                if not isinstance(value, str):
                    continue
                try:
                    address = parse_hostport(render_template(value, fields), field=key)
                except (ConfigError, KeyError):
                    continue  # reported by the template and option checks
                if address.port:
                    yield f"{address.host}:{address.port}", f"{cbase}.options.{key}"


def check_port_clashes(
    podfile: PodFile, *, source: str, state_dir: Path, replicas: Mapping[str, int] | None = None
) -> None:
    """Raise if two containers (or two replicas of one) would bind the same ``ip:port``.

    Args:
        replicas: replica counts to check instead of the file's (used by ``podkit scale``).

    Raises:
        ConfigError: naming the second binding and the first.
    """
    counts = dict(replicas or {})
    seen: dict[str, str] = {}
    for pod_name, pod in podfile.pods.items():
        count = counts.get(pod_name, pod.replicas)
        for address, path in bound_addresses(podfile, pod_name, count, state_dir=state_dir):
            if address in seen:
                first = seen[address]
                hint = (
                    " (replicas of one pod need {pod.ip} in their address)" if first == path else ""
                )
                raise ConfigError(
                    f"port clash: {address} is also bound by {first}{hint}",
                    source=source,
                    path=path,
                )
            seen[address] = path


def check_podfile(
    podfile: PodFile,
    *,
    source: str,
    state_dir: Path,
    components: Mapping[str, object] | None = None,
    path: str | None = None,
    cwd: Path | None = None,
    programs: bool = True,
) -> None:
    """Check what the model alone cannot: references, cycles, clashes, programs, components.

    Args:
        source: the file name used in errors.
        state_dir: where replica directories and discovery files live (``{pod.dir}``).
        components: the podkit commands that exist (default: ``podkit.cli.COMMANDS``).
        path: the ``PATH`` to look programs up in (default: the environment's).
        cwd: the directory relative program paths are taken from (default: the current one).
        programs: look the programs of ``run`` and ``command`` up (False when they run in
            another image, as for ``podkit render kubernetes``).

    Raises:
        ConfigError: the first problem found, with its path in the file.
    """
    if components is None:
        from podkit.cli import COMMANDS

        components = COMMANDS
    cwd = cwd or Path.cwd()
    for name, pod in podfile.pods.items():
        for i, dep in enumerate(pod.after):
            if dep not in podfile.pods:
                raise ConfigError(
                    f"unknown pod {dep!r} (pods: {', '.join(podfile.pods)})",
                    source=source,
                    path=f"pods.{name}.after[{i}]",
                )
            if dep == name:
                raise ConfigError(
                    "a pod cannot wait for itself", source=source, path=f"pods.{name}.after[{i}]"
                )
    cycle = _find_cycle(podfile)
    if cycle:
        raise ConfigError(
            f"cycle in after: {' -> '.join(cycle)}", source=source, path=f"pods.{cycle[0]}.after"
        )
    for name, pod in podfile.pods.items():
        for where, text in _template_strings(name, pod):
            for match in _TEMPLATE_RE.finditer(text):
                if match.group(1) is None:
                    if match.group(2) in podfile.pods and match.group(3) == "ip":
                        continue
                    if match.group(3) == "ip":
                        raise ConfigError(
                            f"unknown pod {match.group(2)!r} in {match.group(0)}",
                            source=source,
                            path=where,
                        )
                if match.group(1) not in TEMPLATE_FIELDS:
                    known = ", ".join(f"{{pod.{f}}}" for f in TEMPLATE_FIELDS) + ", {pods.NAME.ip}"
                    raise ConfigError(
                        f"unknown template field {match.group(0)} (known: {known})",
                        source=source,
                        path=where,
                    )
        for cname, c in pod.containers.items():
            cbase = f"pods.{name}.containers.{cname}"
            if c.component is not None:
                command = c.component.split()[0]
                if command not in components:
                    raise ConfigError(
                        f"unknown component {command!r}; this podkit has: "
                        + ", ".join(sorted(components)),
                        source=source,
                        path=f"{cbase}.component",
                    )
            refs = [(f"options.{k}", v) for k, v in c.options.items()]
            refs += [(f"env.{k}", v) for k, v in c.env.items()]
            for where, ref in refs:
                if isinstance(ref, Discovery) and ref.pod not in podfile.pods:
                    raise ConfigError(
                        f"unknown pod {ref.pod!r} in service discovery",
                        source=source,
                        path=f"{cbase}.{where}.pod",
                    )
            fields = template_fields(podfile, name, 1, state_dir=state_dir)
            container_path = c.env.get("PATH")
            search = container_path if isinstance(container_path, str) else pod.env.get("PATH")
            for field, argv in (("run", c.run), ("command", c.command)):
                if argv and programs:
                    program = render_template(argv[0], fields)
                    if not _program_found(program, path=search, cwd=cwd):
                        raise ConfigError(
                            f"command not found: {program!r} (not an executable on PATH)",
                            source=source,
                            path=f"{cbase}.{field}[0]",
                        )
    check_port_clashes(podfile, source=source, state_dir=state_dir)


def parse_podfile(data: Any, *, source: str) -> PodFile:
    """Validate already-loaded YAML data as a pod file (the model checks only).

    Raises:
        ConfigError: naming the source, the path and the reason.
    """
    try:
        return PodFile.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise validation_error_to_config_error(exc, source=source, words=_WORDS) from exc


def load_podfile(
    path: str | Path,
    *,
    state_dir: Path,
    components: Mapping[str, object] | None = None,
    subnet: str | None = None,
) -> PodFile:
    """Read, validate and check a pod file; nothing is started.

    Args:
        components: the podkit commands that exist (default: ``podkit.cli.COMMANDS``, whose
            parsers then also check each component container's flags).
        subnet: a loopback block that replaces the file's ``subnet``.

    Raises:
        ConfigError: the file cannot be read, is not valid YAML or fails a check.
    """
    source = str(path)
    data = load_yaml(path)
    if subnet is not None and isinstance(data, dict):
        data = {**data, "subnet": subnet}
    podfile = parse_podfile(data, source=source)
    check_podfile(podfile, source=source, state_dir=state_dir, components=components)
    if components is None:
        # The real commands: check each component's flags with its own parser too.
        from podkit.pods._options import check_component_options

        check_component_options(podfile, source=source, state_dir=state_dir)
    return podfile


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the pod file (draft 2020-12), generated from the model."""
    schema = PodFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "podkit pod file"
    return schema
