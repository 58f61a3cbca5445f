"""Each component container's flags, checked by the component's own command-line parser.

``podkit up`` (and ``up --check``) builds the argv every component container would run with —
the same :func:`~podkit.pods.plan.option_argv` the supervisor uses, rendered for replica 1 —
and hands it to the click command of that component with ``make_context``: options are parsed
and converted (durations, sizes, addresses, choices), nothing is invoked. A misspelt option or
``5 seconds`` for a duration is then a configuration error naming the file and the field,
before anything starts, instead of a container that exits at once and is restarted forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from podkit.errors import ConfigError, PodkitError
from podkit.pods.model import Container, Discovery, PodFile, render_template, template_fields
from podkit.pods.plan import flag_name, option_argv


def check_component_options(podfile: PodFile, *, source: str, state_dir: Path) -> None:
    """Parse every component container's argv with its command's parser (without running it).

    Raises:
        ConfigError: the first container whose flags its component rejects, naming the option
            (``pods.lb.containers.balance.options.interval``) and the parser's reason.
    """
    from podkit import cli as podkit_cli

    # Resolving commands records the command path that errors are printed under; the error
    # of this check belongs to `podkit up`.
    current = podkit_cli._current_command[0]
    try:
        _check_all(podkit_cli.cli, podfile, source=source, state_dir=state_dir)
    finally:
        podkit_cli._current_command[0] = current


def _check_all(cli: click.Command, podfile: PodFile, *, source: str, state_dir: Path) -> None:
    for pod_name, pod in podfile.pods.items():
        fields = template_fields(podfile, pod_name, 1, state_dir=state_dir)
        for name, container in pod.containers.items():
            if container.component is None:
                continue
            base = f"pods.{pod_name}.containers.{name}"
            argv = [render_template(a, fields) for a in container.args]
            argv += option_argv(container, fields, state_dir=state_dir)
            if container.command:
                argv += ["--", *(render_template(a, fields) for a in container.command)]
            _parse(cli, container, container.component.split(), argv, source=source, base=base)


def accepts_option(container: Container, flag: str) -> bool:
    """Whether the component a container runs has the option ``flag`` (``--trusted-proxy``)."""
    if container.component is None:
        return False
    from podkit import cli as podkit_cli

    current = podkit_cli._current_command[0]
    try:
        found = _resolve(podkit_cli.cli, container.component.split(), list(container.args))
    finally:
        podkit_cli._current_command[0] = current
    if found is None:
        return False
    command = found[0]
    return any(flag in param.opts for param in command.params if isinstance(param, click.Option))


def _resolve(
    root: click.Command, words: Sequence[str], argv: list[str]
) -> tuple[click.Command, list[str], click.Context, list[str]] | None:
    """The command ``podkit WORDS... ARGV...`` runs, its path, context and remaining argv;
    None when a word names no command."""
    command = root
    ctx = click.Context(root, info_name="podkit", resilient_parsing=False)
    path = ["podkit"]
    for word in words:
        sub = command.get_command(ctx, word) if isinstance(command, click.Group) else None
        if sub is None:
            return None
        command, path = sub, [*path, word]
        ctx = click.Context(command, info_name=word, parent=ctx)
    # A group given its subcommand in `args` (component: queue, args: [work, ...]).
    while isinstance(command, click.Group) and argv and command.get_command(ctx, argv[0]):
        sub = command.get_command(ctx, argv[0])
        assert sub is not None
        command, path = sub, [*path, argv[0]]
        ctx = click.Context(command, info_name=argv[0], parent=ctx)
        argv = argv[1:]
    return command, path, ctx, argv


def _parse(
    root: click.Command,
    container: Container,
    words: Sequence[str],
    argv: list[str],
    *,
    source: str,
    base: str,
) -> None:
    found = _resolve(root, words, argv)
    if found is None:
        raise ConfigError(
            f"`podkit {' '.join(words)}` is not a command", source=source, path=f"{base}.component"
        )
    command, path, ctx, argv = found
    where = f"`{' '.join(path)}`"
    try:
        with command.make_context(path[-1], list(argv), parent=ctx.parent):
            pass
    except click.exceptions.Exit:
        raise ConfigError(
            f"an option of {where} prints and exits (--help, --version); leave it out",
            source=source,
            path=f"{base}.options",
        ) from None
    except click.NoSuchOption as exc:
        hint = ""
        if exc.possibilities:
            hint = f" (did you mean {', '.join(sorted(exc.possibilities))}?)"
        raise ConfigError(
            f"{where} has no option {exc.option_name}{hint}",
            source=source,
            path=_option_path(container, base, [exc.option_name]),
        ) from None
    except click.MissingParameter as exc:
        kind = "argument" if isinstance(exc.param, click.Argument) else "option"
        where_missing = f"{base}.args" if kind == "argument" else f"{base}.options"
        raise ConfigError(
            f"{where} needs the {kind} {_param_name(exc.param)}",
            source=source,
            path=where_missing,
        ) from None
    except click.BadParameter as exc:
        raise ConfigError(
            f"{_param_name(exc.param)} of {where}: {exc.message}",
            source=source,
            path=_param_path(container, base, exc.param),
        ) from None
    except click.UsageError as exc:
        param = getattr(exc, "param", None)
        raise ConfigError(
            f"{where}: {exc.format_message()}",
            source=source,
            path=_param_path(container, base, param),
        ) from None
    except PodkitError as exc:
        raise ConfigError(f"{where}: {exc}", source=source, path=base) from None


def _param_name(param: click.Parameter | None) -> str:
    if param is None:
        return "a value"
    if isinstance(param, click.Option) and param.opts:
        return max(param.opts, key=len)
    return str(param.human_readable_name)


def _option_path(container: Container, base: str, flags: Sequence[str]) -> str:
    for key, value in container.options.items():
        flag = flag_name(key) + ("-file" if isinstance(value, Discovery) else "")
        if flag in flags:
            return f"{base}.options.{key}"
    return f"{base}.options"


def _param_path(container: Container, base: str, param: click.Parameter | None) -> str:
    if isinstance(param, click.Option):
        return _option_path(container, base, param.opts)
    if isinstance(param, click.Argument):
        return f"{base}.command" if param.nargs == -1 and container.command else f"{base}.args"
    return base
