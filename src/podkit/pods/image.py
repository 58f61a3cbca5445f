"""The container image of an app that runs under podkit (a Dockerfile, as text; no I/O).

The repository's ``Dockerfile`` builds ``podkit:VERSION``: Python, podkit and every component.
An app's image starts from it and adds the app's own code, Python requirements and Debian
packages, so ``podkit render kubernetes --image APP`` runs every container of a pod file —
components and ``run`` programs — from one image.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from podkit.pods.kubernetes import DEFAULT_IMAGE

APP_DIR = "/app"  # the working directory of the containers `render kubernetes` writes
APP_UID = 10001  # the unprivileged user of the podkit image
_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+:=~_<>!\[\],-]*$")


def render_dockerfile(
    *,
    base: str = DEFAULT_IMAGE,
    requirements: str | None = None,
    apt: Sequence[str] = (),
    pip: Sequence[str] = (),
    copy: str = ".",
) -> str:
    """A Dockerfile for an app built on the podkit image.

    Args:
        base: the podkit image to start from.
        requirements: a requirements file (relative to the build context) to install.
        apt: Debian packages the app's ``run`` containers need (``redis-server``).
        pip: more Python packages.
        copy: what of the build context to copy to ``/app`` (the app's code).

    Raises:
        ValueError: a package name that is not one.
    """
    for name in [*apt, *pip]:
        if not _PACKAGE.match(name):
            raise ValueError(f"not a package name: {name!r}")
    lines = [
        "# The image of an app run by podkit; built by `docker build -t APP .` and used by",
        "# `podkit render kubernetes POD_FILE --image APP`. Written by `podkit render image`.",
        f"FROM {base}",
        "USER root",
    ]
    if apt:
        packages = " ".join(apt)
        lines += [
            "RUN apt-get update \\",
            f"    && apt-get install -y --no-install-recommends {packages} \\",
            "    && rm -rf /var/lib/apt/lists/*",
        ]
    lines.append(f"WORKDIR {APP_DIR}")
    if requirements is not None:
        quoted = shlex.quote(requirements)
        lines += [
            f"COPY {requirements} {APP_DIR}/{requirements}",
            f"RUN pip install --no-cache-dir -r {quoted}",
        ]
    if pip:
        lines.append(f"RUN pip install --no-cache-dir {' '.join(shlex.quote(p) for p in pip)}")
    lines += [f"COPY {copy} {APP_DIR}", f"USER {APP_UID}", ""]
    return "\n".join(lines)
