"""Bad input never reaches a user as a traceback: every command, fed bytes that are not UTF-8
in its arguments, option values, standard input and files, answers with one line
``podkit <cmd>: error: ...`` and exit code 2 (or 1), or takes the bytes as the data they are.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from podkit.cli import COMMANDS, PodkitCommand, PodkitGroup, cli, main
from podkit.hashing import ALGORITHMS

BAD = "\udcff\udcfe"  # how Python hands over the argv bytes b"\xff\xfe"
BAD_BYTES = os.fsencode(BAD)

# Valid values for what each command requires, so that the bad value under test is the
# only thing wrong. Options not listed take their defaults.
REQUIRED: dict[str, list[str]] = {
    "podkit broker": ["--env-from", "env:PODKIT_ENV", "--map", "dev=127.0.0.1:1"],
    "podkit cache": ["--upstream", "http://127.0.0.1:1"],
    "podkit configsync": ["--source", "http://127.0.0.1:1/c", "--dest", "c.ini"],
    "podkit elect": ["--name", "job"],
    "podkit elect status": ["--name", "job"],
    "podkit logship": ["--path", "app.log", "--to", "out.log"],
    "podkit proxy": ["--upstream", "http://127.0.0.1:1"],
    "podkit queue dead": ["sqlite:///q.db", "jobs"],
    "podkit queue put": ["sqlite:///q.db", "jobs", "item"],
    "podkit queue source": ["sqlite:///q.db", "jobs"],
    "podkit queue stats": ["sqlite:///q.db", "jobs"],
    "podkit queue work": ["sqlite:///q.db", "jobs"],
    "podkit scale": ["web", "2"],
    "podkit split": ["--primary", "http://127.0.0.1:1"],
    "podkit tls": ["--cert", "c.pem", "--key", "k.pem", "--upstream", "http://127.0.0.1:1"],
}
# What comes after the options: a command to run, for the commands that run one.
TRAILING: dict[str, list[str]] = {
    "podkit elect": ["--", "true"],
    "podkit queue source": ["--", "true"],
}


def _commands() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []

    def walk(prefix: str, group: click.Group, ctx: click.Context) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, name
            path = f"{prefix} {name}"
            found.append((path, command))
            if isinstance(command, click.Group):
                walk(path, command, click.Context(command, parent=ctx))

    walk("podkit", cli, click.Context(cli))
    return found


COMMAND_PATHS = [path for path, _ in _commands()]


def _value_cases() -> list[tuple[str, list[str]]]:
    """One argv per (command, parameter that takes text): the parameter gets ``BAD``."""
    cases: list[tuple[str, list[str]]] = []
    for path, command in _commands():
        required = REQUIRED.get(path, [])
        words = path.split()[1:]
        positional = [p for p in command.params if isinstance(p, click.Argument)]
        for param in command.params:
            if getattr(param, "accepts_bytes", False) or param.name is None:
                continue
            if isinstance(param, click.Option):
                if param.is_flag or param.count or param.hidden:
                    continue
                flag = param.opts[0]
                rest = list(required)
                if flag in rest:  # replace the valid value of a required option
                    del rest[rest.index(flag) : rest.index(flag) + 2]
                argv = [*words, *rest, flag, BAD]
            else:
                index = positional.index(param)
                values = list(required[: len(positional)]) or ["x"] * len(positional)
                values = (values + ["x"] * len(positional))[: len(positional)]
                values[index] = BAD
                argv = [*words, *values, *required[len(positional) :]]
            cases.append((f"{path} {param.opts[0] if param.opts else param.name}", argv))
    return cases


def _one_error_line(stderr: str, path: str) -> None:
    """One line, ``podkit <cmd>: error: <reason>``, the reason not starting with a second
    prefix (``error:``, ``podkit``, the command's name, ``<flags>``)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{path}: error: "), stderr
    reason = lines[0][len(f"{path}: error: ") :]
    doubled = ("error:", "podkit", f"{path.split()[-1]}:", "<flags>")
    assert not reason.startswith(doubled), stderr


@pytest.mark.parametrize(("case", "argv"), _value_cases(), ids=[c for c, _ in _value_cases()])
def test_a_value_that_is_not_utf8_is_a_usage_error_naming_the_parameter(
    case: str,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checked before the command runs (nothing is started): exit 2, one line."""
    monkeypatch.chdir(tmp_path)
    path = "podkit " + " ".join(argv[: len(case.split()) - 2])
    trailing = TRAILING.get(path, [])
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *trailing])
    assert exit_info.value.code == 2
    _one_error_line(capsys.readouterr().err, path)


def run(
    argv: list[str | bytes], *, stdin: bytes = b"", cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "podkit", *argv],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


@pytest.mark.parametrize("path", COMMAND_PATHS)
def test_an_argument_that_is_not_utf8_reaches_the_user_as_one_line(
    path: str, tmp_path: Path
) -> None:
    """A real process, given the bytes on its command line: exit 2 and one line."""
    words: list[str | bytes] = [*path.split()[1:], *REQUIRED.get(path, [])]
    if path in ("podkit hash", "podkit queue put"):
        words.append("--key" if path == "podkit queue put" else "--nodes")
    result = run([*words, BAD_BYTES, *TRAILING.get(path, [])], cwd=tmp_path)
    assert result.returncode in (1, 2), result.stderr
    _one_error_line(result.stderr.decode("utf-8", "backslashreplace"), path)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_hash_takes_keys_that_are_not_utf8_as_the_bytes_they_are(algo: str, tmp_path: Path) -> None:
    """Keys are data: on the command line and on stdin they are hashed and printed as the
    bytes given, with and without bounded loads."""
    nodes = ["--nodes", "a,b,c"]
    result = run(["hash", "--algo", algo, *nodes, BAD_BYTES, "user:1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.rsplit(b" ", 1)[0] for line in lines] == [BAD_BYTES, b"user:1"]
    piped = run(
        ["hash", "--algo", algo, *nodes, "--bounded-load", "1.5", "-"],
        stdin=BAD_BYTES + b"\nuser:1\n",
        cwd=tmp_path,
    )
    assert piped.returncode == 0, piped.stderr
    assert [line.rsplit(b" ", 1)[0] for line in piped.stdout.splitlines()] == [
        BAD_BYTES,
        b"user:1",
    ]
    # The same key gives the same node by argument and by stdin.
    same = run(["hash", "--algo", algo, *nodes, "-"], stdin=BAD_BYTES + b"\n", cwd=tmp_path)
    assert same.stdout.splitlines()[0] == lines[0]


def test_queue_put_stores_an_item_that_is_not_utf8_and_refuses_it_as_json(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    assert run(["queue", "put", url, "jobs", BAD_BYTES], cwd=tmp_path).returncode == 0
    piped = run(["queue", "put", url, "jobs", "-"], stdin=BAD_BYTES + b"\n", cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    as_json = run(["queue", "put", url, "jobs", "--json", "-"], stdin=BAD_BYTES, cwd=tmp_path)
    assert as_json.returncode == 2
    _one_error_line(as_json.stderr.decode(), "podkit queue put")


@pytest.mark.parametrize(
    ("path", "argv", "filename"),
    [
        ("podkit up", ["up", "{file}", "--state-dir", "{dir}"], "pods.yaml"),
        (
            "podkit configsync",
            ["configsync", "--source", "http://127.0.0.1:1/c", "--dest", "{dir}/c.ini",
             "--template", "{file}"],
            "c.ini.j2",
        ),
        (
            "podkit balance",
            ["balance", "--listen", "127.0.0.1:0", "--backends-file", "{file}"],
            "backends.txt",
        ),
        (
            "podkit split",
            ["split", "--listen", "127.0.0.1:0", "--config", "{file}"],
            "split.yaml",
        ),
        (
            "podkit tls",
            ["tls", "--listen", "127.0.0.1:0", "--cert", "{file}", "--key", "{file}",
             "--upstream", "http://127.0.0.1:1"],
            "site.pem",
        ),
        (
            "podkit logship",
            ["logship", "--path", "{dir}/app.log", "--to", "file://{dir}/out.log",
             "--state", "{file}"],
            "state.json",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("podkit") else "",
)  # fmt: skip
def test_a_file_that_is_not_utf8_is_one_line_naming_the_file(
    path: str, argv: list[str], filename: str, tmp_path: Path
) -> None:
    bad = tmp_path / filename
    bad.write_bytes(b"x: 1\n" + BAD_BYTES + b"\n")
    (tmp_path / "app.log").write_bytes(b"")
    words: list[str | bytes] = [word.format(file=bad, dir=tmp_path) for word in argv]
    result = run(words, cwd=tmp_path)
    assert result.returncode in (1, 2), result.stderr
    stderr = result.stderr.decode("utf-8", "backslashreplace")
    _one_error_line(stderr, path)
    assert filename in stderr


def test_every_registered_command_is_checked() -> None:
    """The sweep above covers every command of the CLI; those not declared as a
    PodkitCommand or PodkitGroup get the same check before their callback."""
    assert {path.split()[1] for path in COMMAND_PATHS} == set(COMMANDS)
    for path, command in _commands():
        declared = isinstance(command, PodkitCommand | PodkitGroup)
        assert declared or getattr(command, "_podkit", False), path
