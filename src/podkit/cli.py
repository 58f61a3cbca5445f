"""The ``podkit`` command line.

Each command lives beside its component and is loaded only when it runs (or when ``--help``
lists them), so one command's dependencies never slow another's start. Errors print one line,
``podkit <cmd>: error: <reason>``, and exit 2 for usage and configuration errors, 1 for
runtime failures.

Words on the command line are text: an option value or argument that is not valid UTF-8 is a
usage error naming the parameter, checked before a command runs. The exceptions are
parameters whose words are data rather than text (:class:`BytesArgument`: keys to hash, a
queue item, a command to execute); they receive the undecodable bytes as surrogate escapes,
and ``os.fsencode`` gives the original bytes back.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import PurePath
from typing import Any, NoReturn

import click

from podkit import __version__
from podkit.errors import EXIT_USAGE, PodkitError

# name -> "module:attribute" of a click command. Keep sorted by name.
COMMANDS: dict[str, str] = {
    "adapt": "podkit.adapter.cli:group",
    "balance": "podkit.serving.balance.command:command",
    "broker": "podkit.ambassador.broker.command:command",
    "cache": "podkit.serving.cache.command:command",
    "configsync": "podkit.sidecar.configsync:command",
    "discover": "podkit.pods.discover:command",
    "down": "podkit.pods.cli:down_command",
    "elect": "podkit.serving.election.cli:command",
    "functions": "podkit.serving.functions.command:group",
    "hash": "podkit.hashing.cli:command",
    "logs": "podkit.pods.cli:logs_command",
    "logship": "podkit.sidecar.logship:command",
    "pipeline": "podkit.batch.pipeline.cli:group",
    "proxy": "podkit.apps.proxy:command",
    "queue": "podkit.batch.queue.cli:group",
    "render": "podkit.pods.render:group",
    "restart": "podkit.pods.cli:restart_command",
    "scale": "podkit.pods.cli:scale_command",
    "search": "podkit.serving.search.command:group",
    "shard": "podkit.ambassador.shard.command:command",
    "split": "podkit.ambassador.split.command:command",
    "status": "podkit.pods.cli:status_command",
    "tls": "podkit.sidecar.tls:command",
    "up": "podkit.pods.cli:up_command",
    "whoami": "podkit.apps.whoami:command",
}

_current_command = ["podkit"]


class BytesArgument(click.Argument):
    """An argument whose words are data, not text: they may hold any bytes (see the module)."""

    accepts_bytes = True


def _undecodable(value: object) -> str | None:
    """The first string in ``value`` that has no UTF-8 form (a surrogate escape), or None."""
    if isinstance(value, PurePath):
        value = str(value)
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return value
        return None
    if isinstance(value, tuple | list):
        for item in value:
            found = _undecodable(item)
            if found is not None:
                return found
    return None


def check_text_parameters(ctx: click.Context) -> None:
    """Refuse a parameter value that is not valid UTF-8 (unless its parameter takes bytes).

    Raises:
        click.BadParameter: naming the parameter and showing the bytes.
    """
    for param in ctx.command.params:
        if getattr(param, "accepts_bytes", False) or param.name is None:
            continue
        bad = _undecodable(ctx.params.get(param.name))
        if bad is not None:
            raise click.BadParameter(f"not valid UTF-8: {os.fsencode(bad)!r}", ctx=ctx, param=param)


def _check_before_callback(command: click.Command) -> None:
    """Give a command declared without ``cls=PodkitCommand`` the same UTF-8 check, run
    before its callback (and the same for a plain group's subcommands)."""
    if isinstance(command, PodkitCommand | PodkitGroup) or getattr(command, "_podkit", False):
        return
    inner = command.callback
    if inner is not None:

        @functools.wraps(inner)
        def checked(*args: Any, **kwargs: Any) -> Any:
            check_text_parameters(click.get_current_context())
            return inner(*args, **kwargs)

        command.callback = checked
    command._podkit = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _check_before_callback(sub)


class PodkitCommand(click.Command):
    """A command that remembers its path, so errors can name it, and takes only UTF-8 text."""

    def invoke(self, ctx: click.Context) -> Any:
        _current_command[0] = ctx.command_path
        check_text_parameters(ctx)
        return super().invoke(ctx)


class PodkitGroup(click.Group):
    """A group whose subcommands are imported on first use (see ``COMMANDS``)."""

    command_class = PodkitCommand

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        _current_command[0] = f"{ctx.command_path} {cmd_name}"
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in self.lazy:
            return command
        module_name, _, attr = self.lazy[cmd_name].partition(":")
        loaded = getattr(importlib.import_module(module_name), attr)
        if not isinstance(loaded, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
        _check_before_callback(loaded)
        return loaded

    def invoke(self, ctx: click.Context) -> Any:
        _current_command[0] = ctx.command_path
        check_text_parameters(ctx)
        return super().invoke(ctx)


PodkitGroup.group_class = PodkitGroup


@click.group(
    cls=PodkitGroup,
    lazy=COMMANDS,
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        "terminal_width": 100,
    },
)
@click.version_option(__version__, prog_name="podkit")
def cli() -> None:
    """podkit: the patterns of distributed systems as components you can run.

    Sidecars, ambassadors, adapters, replicated and sharded services, ownership election,
    work queues and batch pipelines; each runs from this CLI, embeds through the Python API and
    composes in a pod file.
    """


def _fail(command: str, message: str, code: int) -> NoReturn:
    click.echo(f"{command}: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``podkit`` console script and ``python -m podkit``."""
    try:
        result = cli.main(args=argv, prog_name="podkit", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(EXIT_USAGE)
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx is not None else "podkit"
        _fail(path, exc.format_message(), EXIT_USAGE)
    except click.Abort:
        _fail(_current_command[0], "aborted", 1)
    except click.ClickException as exc:
        _fail(_current_command[0], exc.format_message(), exc.exit_code)
    except PodkitError as exc:
        _fail(_current_command[0], str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
