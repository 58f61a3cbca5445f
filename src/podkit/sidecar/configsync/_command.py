"""``podkit configsync``: the command line of the config sync sidecar."""

from __future__ import annotations

import json
import shlex

import click

from podkit.cli import PodkitCommand
from podkit.errors import ConfigError
from podkit.runtime import Request, Response, Runtime, RuntimeOptions, run_component
from podkit.runtime.cli_options import DURATION, runtime_options
from podkit.runtime.config import format_duration, read_text_file
from podkit.sidecar._retry import Backoff
from podkit.sidecar.configsync._core import Readiness
from podkit.sidecar.configsync._notify import (
    ExecNotifier,
    Notifier,
    PostNotifier,
    SignalNotifier,
    parse_signal,
)
from podkit.sidecar.configsync._sources import DEFAULT_SOURCE_TIMEOUT, open_source
from podkit.sidecar.configsync._sync import (
    DEFAULT_EVERY,
    DEFAULT_RETRY_INITIAL,
    DEFAULT_RETRY_MAX,
    ConfigSync,
    ConfigSyncConfig,
)


async def serve_configsync(
    rt: Runtime,
    config: ConfigSyncConfig,
    *,
    source_url: str,
    notifier: Notifier | None,
    source_timeout: float = DEFAULT_SOURCE_TIMEOUT,
) -> None:
    """Sync until the runtime drains; ``/readyz`` waits for the first good file and shows
    failures; ``/configsync`` on the admin endpoint shows the state as JSON."""
    source = open_source(source_url, timeout=source_timeout, every=config.every)

    def on_readiness(readiness: Readiness) -> None:
        if readiness.ready:
            rt.set_ready()
        else:
            rt.set_not_ready(readiness.reason)

    try:
        sync = ConfigSync(
            config, source, notifier=notifier, registry=rt.registry, on_readiness=on_readiness
        )

        async def status(_: Request) -> Response:
            return Response.json(200, json.dumps(sync.statistics().to_dict()))

        rt.add_route("/configsync", status)
        rt.log.info(
            "syncing",
            extra={
                "source": source.description,
                "dest": config.dest,
                "mode": "watch" if config.watch else f"every {format_duration(config.every)}",
                "notify": notifier.description if notifier is not None else None,
            },
        )
        await sync.serve(rt.draining)
    finally:
        await source.aclose()
        if notifier is not None:
            await notifier.aclose()


def _split(command: str | None, flag: str) -> tuple[str, ...]:
    if command is None:
        return ()
    try:
        argv = tuple(shlex.split(command))
    except ValueError as exc:
        raise ConfigError(f"cannot split the command: {exc}", path=flag) from exc
    if not argv:
        raise ConfigError("empty command", path=flag)
    return argv


@click.command(cls=PodkitCommand)
@click.option(
    "--source",
    "source_url",
    required=True,
    help="http(s)://HOST/PATH, or etcd://HOST:PORT/KEY (a trailing / watches a prefix).",
)
@click.option("--dest", required=True, help="The configuration file the application reads.")
@click.option(
    "--every",
    type=DURATION,
    default=format_duration(DEFAULT_EVERY),
    show_default=True,
    help="Poll interval (with --watch: for HTTP servers that do not hold requests).",
)
@click.option(
    "--watch",
    is_flag=True,
    default=False,
    show_default=True,
    help="Wait for changes: etcd watch, or HTTP long-poll (Prefer: wait=N).",
)
@click.option(
    "--template",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Jinja2 template rendering the fetched JSON into the application's format.",
)
@click.option(
    "--validate",
    default=None,
    help="Command that checks a candidate file ({} is its path); exit 0 accepts it.",
)
@click.option(
    "--signal",
    "signal_name",
    default=None,
    help="Signal to send on change (e.g. HUP), to the pid in --pid-file.",
)
@click.option("--pid-file", default=None, help="File holding the application's pid.")
@click.option(
    "--exec",
    "exec_command",
    default=None,
    help="Command to run on change ({} is the destination path).",
)
@click.option("--post", "post_url", default=None, help="URL to POST {path, sha256} to on change.")
@click.option(
    "--timeout",
    "source_timeout",
    type=DURATION,
    default=format_duration(DEFAULT_SOURCE_TIMEOUT),
    show_default=True,
    help="A source answering slower than this counts as down.",
)
@click.option(
    "--retry-max",
    type=DURATION,
    default=format_duration(DEFAULT_RETRY_MAX),
    show_default=True,
    help="Longest wait between attempts after failures (the backoff doubles from 500ms).",
)
@runtime_options
def command(
    source_url: str,
    dest: str,
    every: float,
    watch: bool,
    template: str | None,
    validate: str | None,
    signal_name: str | None,
    pid_file: str | None,
    exec_command: str | None,
    post_url: str | None,
    source_timeout: float,
    retry_max: float,
    runtime: RuntimeOptions,
) -> int:
    """Keep a configuration file in sync with an HTTP endpoint or etcd, and tell the app.

    Each change is rendered (--template), validated (--validate), written atomically and
    announced (--signal/--pid-file, --exec or --post) only when the content really changed.
    When the source is down or returns garbage the last good file stays.
    """
    chosen = [
        flag
        for flag, value in (
            ("--signal", signal_name),
            ("--exec", exec_command),
            ("--post", post_url),
        )
        if value is not None
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one way to notify, not {' and '.join(chosen)}")
    if (signal_name is None) != (pid_file is None):
        raise click.UsageError("--signal and --pid-file go together")
    notifier: Notifier | None = None
    if signal_name is not None and pid_file is not None:
        notifier = SignalNotifier(parse_signal(signal_name), pid_file)
    elif exec_command is not None:
        notifier = ExecNotifier(list(_split(exec_command, "--exec")))
    elif post_url is not None:
        if not post_url.startswith(("http://", "https://")):
            raise ConfigError(f"expected an http(s) URL, got {post_url!r}", path="--post")
        notifier = PostNotifier(post_url)
    template_text = None
    if template is not None:
        template_text = read_text_file(template)
    config = ConfigSyncConfig(
        dest=dest,
        every=every,
        watch=watch,
        template=template_text,
        template_name=template or "template",
        validate=_split(validate, "--validate"),
        backoff=Backoff(initial=DEFAULT_RETRY_INITIAL, maximum=retry_max),
    )
    if template_text is not None:
        from podkit.sidecar.configsync._core import SyncFailure, load_template

        try:
            load_template(template_text, name=template or "template")
        except SyncFailure as exc:
            raise ConfigError(exc.message, source=template) from exc

    async def main(rt: Runtime) -> None:
        await serve_configsync(
            rt, config, source_url=source_url, notifier=notifier, source_timeout=source_timeout
        )

    return run_component("configsync", main, runtime)
