"""``podkit render kubernetes`` and ``podkit render image``: the shell around the renderers.

It reads the pod file and the files it names, applies ``--set``, runs the same checks as
``podkit up --check`` (but does not look for ``run`` programs on this machine: they run in the
image), calls :func:`~podkit.pods.kubernetes.render_kubernetes` and writes the result.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from podkit.cli import PodkitGroup
from podkit.errors import ConfigError, UsageError
from podkit.pods._options import check_component_options
from podkit.pods.image import render_dockerfile
from podkit.pods.kubernetes import (
    DEFAULT_IMAGE,
    DEFAULT_KUBE_VERSION,
    DEFAULT_MAX_REPLICAS,
    RenderOptions,
    apply_sets,
    dump_stream,
    dump_yaml,
    kustomization,
    manifest_filename,
    parse_kube_version,
    render_kubernetes,
)
from podkit.pods.model import check_podfile, parse_podfile
from podkit.pods.supervisor import DEFAULT_STATE_DIR
from podkit.runtime.config import format_size, load_yaml, read_text_file

MAX_FILE_BYTES = 1 << 20  # a ConfigMap or Secret holds at most 1 MiB (etcd's value limit)
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@click.group(cls=PodkitGroup)
def group() -> None:
    """Render a pod file for somewhere else: Kubernetes manifests, a container image."""


def _kube_version(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        return parse_kube_version(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _namespace(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _DNS_LABEL.match(value):
        raise click.BadParameter(f"expected a DNS label (a-z, 0-9, -), got {value!r}")
    return value


@group.command("kubernetes")
@click.argument("pod_file")
@click.option("--namespace", default=None, callback=_namespace, help="Namespace of every object.")
@click.option(
    "--image",
    default=DEFAULT_IMAGE,
    show_default=True,
    help="Image of the containers (the repository's Dockerfile, or `podkit render image`).",
)
@click.option(
    "--container-image",
    "container_images",
    multiple=True,
    metavar="POD/CONTAINER=IMAGE",
    help="Another image for one container (repeatable), e.g. cache/redis=redis:7.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a value of the pod file (repeatable), e.g. "
    "pods.nightly.containers.job.options.backend=redis://redis:6379/0.",
)
@click.option(
    "--out",
    default="-",
    show_default=True,
    metavar="DIR|-",
    help="A directory (one file per object and a kustomization.yaml) or - for one YAML stream.",
)
@click.option(
    "--kube-version",
    default=".".join(map(str, DEFAULT_KUBE_VERSION)),
    show_default=True,
    callback=_kube_version,
    help="The cluster's version; below 1.29 sidecars are ordinary containers.",
)
@click.option(
    "--autoscaler",
    type=click.Choice(["keda", "hpa"]),
    default="keda",
    show_default=True,
    help="Autoscaled queue workers: a KEDA ScaledObject on the queue depth, or an HPA on CPU.",
)
@click.option(
    "--max-replicas",
    type=click.IntRange(1, 1000),
    default=DEFAULT_MAX_REPLICAS,
    show_default=True,
    help="The autoscaler's ceiling for queue workers.",
)
def kubernetes_command(
    pod_file: str,
    namespace: str | None,
    image: str,
    container_images: tuple[str, ...],
    sets: tuple[str, ...],
    out: str,
    kube_version: tuple[int, int],
    autoscaler: str,
    max_replicas: int,
) -> int:
    """Render POD_FILE as Kubernetes manifests.

    Each pod becomes a Deployment (a StatefulSet when it uses {pod.replica}), sidecar
    components native sidecars, `ready` and admin endpoints probes, bound ports Services,
    named files ConfigMaps; a balancer over a pod follows a headless Service; autoscaled queue
    workers get a KEDA ScaledObject. State that replicas would share on one disk (sqlite://)
    is an error: --set a redis:// or etcd:// URL.
    """
    images: dict[str, str] = {}
    for item in container_images:
        target, sep, value = item.partition("=")
        if not sep or "/" not in target or not value:
            raise UsageError(f"--container-image: expected POD/CONTAINER=IMAGE, got {item!r}")
        images[target] = value
    data = apply_sets(load_yaml(pod_file), sets, source=pod_file)
    podfile = parse_podfile(data, source=pod_file)
    state_dir = DEFAULT_STATE_DIR.absolute()
    check_podfile(podfile, source=pod_file, state_dir=state_dir, programs=False)
    check_component_options(podfile, source=pod_file, state_dir=state_dir)
    for target in images:
        pod, _, container = target.partition("/")
        if pod not in podfile.pods or container not in podfile.pods[pod].containers:
            raise UsageError(f"--container-image: no container {target!r} in {pod_file}")
    options = RenderOptions(
        project=_project_name(pod_file),
        namespace=namespace,
        image=image,
        images=images,
        kube_version=kube_version,
        autoscaler="hpa" if autoscaler == "hpa" else "keda",
        max_replicas=max_replicas,
        files=dict(_named_files(data, source=pod_file)),
    )
    rendering = render_kubernetes(podfile, options, source=pod_file)
    for note in rendering.notes:
        click.echo(f"podkit render kubernetes: note: {note}", err=True)
    if out == "-":
        click.echo(dump_stream(rendering.manifests), nl=False)
        return 0
    directory = Path(out)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--out: {out} is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    for manifest in rendering.manifests:
        (directory / manifest_filename(manifest)).write_text(dump_yaml(manifest), encoding="utf-8")
    (directory / "kustomization.yaml").write_text(
        dump_yaml(kustomization(rendering.manifests, namespace=namespace)), encoding="utf-8"
    )
    click.echo(
        f"{out}: {len(rendering.manifests)} objects and kustomization.yaml "
        f"(`kubectl apply -k {out}`)",
        err=True,
    )
    return 0


def _project_name(pod_file: str) -> str:
    path = Path(pod_file)
    # examples/search/pods.yaml is the "search" project: the directory names a file called pods.
    name = path.resolve().parent.name if path.stem in ("pods", "pod") else path.stem
    stem = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    return stem[:63].strip("-") or "podkit"


def _named_files(data: Any, *, source: str) -> Iterator[tuple[str, str]]:
    """``(as written, text)`` of each file an option or argument of a component names.

    A value names a file when it is a path to a regular file, relative to the working
    directory (where `podkit up` would run), without templates.
    """
    pods = data.get("pods") if isinstance(data, dict) else None
    if not isinstance(pods, dict):
        return
    seen: set[str] = set()
    for pod_name, pod in pods.items():
        containers = pod.get("containers") if isinstance(pod, dict) else None
        if not isinstance(containers, dict):
            continue
        for cname, container in containers.items():
            if not isinstance(container, dict) or "component" not in container:
                continue
            values: list[tuple[str, Any]] = [
                (f"args[{i}]", v) for i, v in enumerate(container.get("args") or [])
            ]
            for key, value in (container.get("options") or {}).items():
                items = value if isinstance(value, list) else [value]
                values += [(f"options.{key}", v) for v in items]
            for where, value in values:
                if not isinstance(value, str) or "{" in value or value in seen:
                    continue
                if "://" in value or "\n" in value or len(value) > 4096:
                    continue
                path = Path(value)
                with contextlib.suppress(OSError):
                    if not path.is_file():
                        continue
                    if path.stat().st_size > MAX_FILE_BYTES:
                        raise ConfigError(
                            f"{value} is larger than {format_size(MAX_FILE_BYTES)}, the most a "
                            "ConfigMap holds; put it in the image instead",
                            source=source,
                            path=f"pods.{pod_name}.containers.{cname}.{where}",
                        )
                    seen.add(value)
                    yield value, read_text_file(path)


@group.command("image")
@click.option(
    "--from",
    "base",
    default=DEFAULT_IMAGE,
    show_default=True,
    help="The podkit image to start from (the repository's Dockerfile builds it).",
)
@click.option(
    "--requirements",
    default=None,
    help="A requirements file of the app, relative to the build context.",
)
@click.option("--apt", multiple=True, help="A Debian package the app needs (repeatable).")
@click.option("--pip", "pip_packages", multiple=True, help="A Python package (repeatable).")
@click.option(
    "--copy",
    default=".",
    show_default=True,
    help="What of the build context is the app's code (copied to /app).",
)
@click.option(
    "--out",
    default="-",
    show_default=True,
    metavar="FILE|-",
    help="Where to write the Dockerfile.",
)
def image_command(
    base: str,
    requirements: str | None,
    apt: tuple[str, ...],
    pip_packages: tuple[str, ...],
    copy: str,
    out: str,
) -> int:
    """Write a Dockerfile for an app that runs under podkit.

    It starts from the podkit image and adds the app's code, requirements and packages;
    `podkit render kubernetes --image APP` then runs the pod file's containers from it.
    """
    if requirements is not None and not Path(requirements).is_file():
        raise UsageError(f"--requirements: no file {requirements!r}")
    try:
        text = render_dockerfile(
            base=base, requirements=requirements, apt=apt, pip=pip_packages, copy=copy
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if out == "-":
        click.echo(text, nl=False)
    else:
        Path(out).write_text(text, encoding="utf-8")
        click.echo(f"{out}: written (`docker build -t APP -f {out} .`)", err=True)
    return 0


__all__ = ["group", "image_command", "kubernetes_command"]
