"""Helpers of the adapter tests: ``promtool check metrics`` on a page."""

from __future__ import annotations

import subprocess

from podkit.testing import require_binary


def promtool_check(page: bytes) -> None:
    """Fail unless ``promtool check metrics`` accepts ``page`` without a single complaint."""
    done = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=page,
        capture_output=True,
        timeout=30,
        check=False,
    )
    problems = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, f"promtool: {problems}\n{page.decode()}"
    assert not problems.strip(), f"promtool: {problems}\n{page.decode()}"


def samples(page: bytes) -> dict[str, float]:
    """``name{labels}`` -> value of every sample line."""
    out = {}
    for line in page.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
