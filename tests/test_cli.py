"""The CLI: every command is listed and documented; bad input is one line and an exit code."""

from __future__ import annotations

import socket
import subprocess
import sys

import click
import pytest

from podkit.cli import COMMANDS, cli


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _all_commands() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    ctx = click.Context(cli)

    def walk(prefix: str, group: click.Group, gctx: click.Context) -> None:
        for name in group.list_commands(gctx):
            command = group.get_command(gctx, name)
            assert command is not None, name
            path = f"{prefix} {name}"
            found.append((path, command))
            if isinstance(command, click.Group):
                walk(path, command, click.Context(command, parent=gctx))

    walk("podkit", cli, ctx)
    return found


def test_help_lists_every_registered_command_with_a_description() -> None:
    result = run("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        line = next(
            (ln for ln in result.stdout.splitlines() if ln.strip().startswith(name + " ")), ""
        )
        assert line.strip() != name, f"{name} has no description"
        assert line, f"{name} missing from podkit --help"


@pytest.mark.parametrize(("path", "command"), _all_commands(), ids=lambda v: str(v))
def test_every_option_is_documented_with_its_default(path: str, command: click.Command) -> None:
    assert command.help or command.short_help, f"{path} has no help text"
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden or param.name == "help":
            continue
        assert param.help, f"{path} {param.opts[0]} has no help text"
        needs_default = not param.is_flag and not param.required and not param.multiple
        # to_info_dict() reports "no default" as None on every click version
        has_default = param.to_info_dict().get("default") is not None
        if needs_default and has_default:
            assert param.show_default, f"{path} {param.opts[0]} does not show its default"


def test_unknown_flag_is_one_line_and_exit_2() -> None:
    result = run("whoami", "--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("podkit whoami: error:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_command_is_exit_2() -> None:
    result = run("no-such-command")
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_value_names_the_option() -> None:
    result = run("whoami", "--listen", "nowhere")
    assert result.returncode == 2
    assert "--listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run("whoami", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"podkit whoami: error: cannot listen on 127.0.0.1:{port}: address already in use"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["whoami"], "--listen"),
        (["whoami", "--listen", "127.0.0.1:0"], "--admin"),
        (["proxy", "--upstream", "http://127.0.0.1:1"], "--listen"),
        (["proxy", "--mode", "tcp", "--upstream", "127.0.0.1:1"], "--listen"),
        (["balance", "--backend", "http://127.0.0.1:1"], "--listen"),
        (["cache", "--upstream", "http://127.0.0.1:1"], "--listen"),
    ],
)
def test_an_address_in_use_is_one_line_without_a_doubled_prefix(
    command: list[str], flag: str
) -> None:
    """`podkit proxy: error: cannot listen on ...`, never `... error: proxy: cannot listen`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run(*command, flag, f"127.0.0.1:{port}")
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"podkit {command[0]}: error: cannot listen on 127.0.0.1:{port}: address already in use"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--listen", "--admin"])
def test_an_address_without_a_host_is_refused_and_both_hosts_are_shown(flag: str) -> None:
    """`:8090` means every interface to nginx and Go users and this machine to others: the
    host must be written."""
    result = run("whoami", flag, ":8090")
    assert result.returncode == 2
    assert "127.0.0.1:8090 (this machine only) or 0.0.0.0:8090 (every interface)" in (result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1


def test_version_is_printed() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert "podkit" in result.stdout
