"""Setup and the quick start say what they do, and print commands that work as typed."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

from podkit.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

FAKE_PYTHON = """#!/bin/sh
# Stands in for the venv's python: versions for the stamp, and a compiler that fails at once.
case "$*" in
  "-m mypy --version") echo "mypy 0.0 (fake)" ;;
  "-V") echo "Python 3.0 (fake)" ;;
  *) echo "no compiler here" >&2; exit 1 ;;
esac
"""


def _modules(script: str) -> list[str]:
    block = script.split("MODULES=(", 1)[1].split(")", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip().endswith(".py")]


def test_the_native_build_says_it_compiles_for_about_a_minute_before_it_starts(
    tmp_path: Path,
) -> None:
    """A copy of the build script in a scratch tree, with a python whose compiler fails at once:
    the first line tells the user what the minute of silence will be."""
    script = (SCRIPTS / "build-native.sh").read_text()
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPTS / "build-native.sh", tmp_path / "scripts" / "build-native.sh")
    for module in _modules(script):
        path = tmp_path / "src" / module
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "build-native.sh")],
        env={"PATH": "/usr/bin:/bin", "PY": str(fake)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("compiling the data plane (about a minute, once)")
    assert "podkit runs as pure Python" in result.stderr


def _banner_commands(text: str) -> list[str]:
    """The command words of the quick-start banners in scripts/up.sh."""
    commands: list[str] = []
    for banner in re.findall(r"<<'BANNER'\n(.*?)\nBANNER", text, flags=re.DOTALL):
        for line in banner.splitlines():
            found = re.findall(r"((?:\.venv/bin/)?podkit ([\w-]+))", line)
            commands.extend(words for words, name in found if name in COMMANDS)
    return commands


def test_the_quick_start_banner_prints_podkit_commands_that_run_from_the_checkout() -> None:
    """`podkit` is not on PATH after `make up`: every command the banner shows names the
    venv's script, which exists once setup has run."""
    commands = _banner_commands((SCRIPTS / "up.sh").read_text())
    assert commands, "no podkit command found in the banners"
    for command in commands:
        assert command.startswith(".venv/bin/podkit "), command
    assert (ROOT / ".venv" / "bin" / "podkit").exists()
