"""The compiled data plane (scripts/build-native.sh): never stale, and present where required."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPILED = ("podkit.engines.http.server", "podkit.engines.http.client", "podkit.engines.http.rules")


def test_compiled_modules_are_not_stale() -> None:
    """Edited sources with old extension modules beside them would run the old code."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-native.sh"), "--check"],
        env={**os.environ, "PY": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(
    os.environ.get("PODKIT_REQUIRE_NATIVE") != "1", reason="PODKIT_REQUIRE_NATIVE is not 1"
)
def test_the_data_plane_is_compiled_where_required() -> None:
    """CI sets PODKIT_REQUIRE_NATIVE=1: the suite must then run the compiled modules."""
    import importlib

    for name in COMPILED:
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert module.__file__.endswith(".so"), f"{name} runs from {module.__file__}"
