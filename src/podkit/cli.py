"""The ``podkit`` command line.

Each command lives beside its component and is loaded only when it runs (or when ``--help``
lists them), so one command's dependencies never slow another's start. Errors print one line,
``podkit <cmd>: error: <reason>``, and exit 2 for usage and configuration errors, 1 for
runtime failures.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, NoReturn

import click

from podkit import __version__
from podkit.errors import EXIT_USAGE, PodkitError

# name -> "module:attribute" of a click command. Keep sorted by name.
COMMANDS: dict[str, str] = {
    "balance": "podkit.serving.balance.command:command",
    "cache": "podkit.serving.cache.command:command",
    "configsync": "podkit.sidecar.configsync:command",
    "down": "podkit.pods.cli:down_command",
    "elect": "podkit.serving.election.cli:command",
    "hash": "podkit.hashing.cli:command",
    "logship": "podkit.sidecar.logship:command",
    "proxy": "podkit.apps.proxy:command",
    "queue": "podkit.batch.queue.cli:group",
    "scale": "podkit.pods.cli:scale_command",
    "shard": "podkit.ambassador.shard.command:command",
    "status": "podkit.pods.cli:status_command",
    "tls": "podkit.sidecar.tls:command",
    "up": "podkit.pods.cli:up_command",
    "whoami": "podkit.apps.whoami:command",
}

_current_command = ["podkit"]


class PodkitCommand(click.Command):
    """A command that remembers its path, so errors can name it."""

    def invoke(self, ctx: click.Context) -> Any:
        _current_command[0] = ctx.command_path
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
        return loaded

    def invoke(self, ctx: click.Context) -> Any:
        _current_command[0] = ctx.command_path
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
