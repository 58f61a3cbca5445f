"""The ``podkit split`` command: flags (or a YAML file) in, a validated :class:`SplitOptions`
out."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from podkit.ambassador.split._assign import parse_percent
from podkit.ambassador.split._config import (
    check_url,
    diff_limits,
    read_split_config,
    table_from_flags,
)
from podkit.ambassador.split._diff import DEFAULT_IGNORED_HEADERS, DiffLimits
from podkit.ambassador.split._ramp import (
    DEFAULT_MIN_REQUESTS,
    parse_rollback_rules,
    parse_steps,
)
from podkit.ambassador.split._shadow import (
    DEFAULT_SHADOW_CONCURRENCY,
    DEFAULT_SHADOW_MAX_BODY,
    DEFAULT_SHADOW_MAX_RATE,
    DEFAULT_SHADOW_QUEUE,
    DEFAULT_SHADOW_TIMEOUT,
)
from podkit.ambassador.split.app import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    RampOptions,
    ShadowOptions,
    SplitOptions,
    serve_split,
)
from podkit.cli import PodkitCommand
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.http.cli_options import (
    access_log_options,
    server_limit_options,
    upstream_timeout_options,
)
from podkit.engines.http.rules import ServerLimits
from podkit.errors import ConfigError
from podkit.runtime import (
    HostPort,
    Runtime,
    RuntimeOptions,
    format_duration,
    format_size,
    run_component,
)
from podkit.runtime.cli_options import DURATION, HOSTPORT, SIZE, F, runtime_options
from podkit.runtime.config import format_rate, parse_rate
from podkit.serving.balance._affinity import parse_networks

DEFAULT_EVERY = 300.0  # a ramp step every 5 minutes, Flagger's usual analysis interval
DEFAULT_ROLLBACK_ON = "5xx>1%,p99>1.5x"
MAX_SHADOW_QUEUE = 1_000_000  # a queue longer than this is memory, not a buffer
MAX_SHADOW_CONCURRENCY = 1024  # shadow connections at once


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)


_LIMITS = DiffLimits()
# DiffLimits field -> (flag, type, help); each is also a key of the config file's diff: section
DIFF_LIMIT_FLAGS: dict[str, tuple[str, click.ParamType[Any], str]] = {
    "max_routes": ("--diff-max-routes", click.INT,
                   "Routes tracked in diffs; the rest count under 'other'."),
    "max_paths": ("--diff-max-paths", click.INT,
                  "Paths tracked per route; the rest count under '$.other'."),
    "examples": ("--diff-examples", click.INT,
                 "Example pairs kept per route (the latest; 0 keeps none)."),
    "example_body": ("--diff-example-body", SIZE, "Bytes of each body kept in an example."),
    "max_differences": ("--diff-max-differences", click.INT,
                        "Differences collected per pair; more are reported as one 'body'."),
    "max_depth": ("--diff-max-depth", click.INT,
                  "JSON nesting followed; deeper values are compared whole."),
    "max_body": ("--diff-max-body", SIZE, "Answers larger than this are not compared."),
}  # fmt: skip


def diff_limit_options(func: F) -> F:
    """The ``--diff-*`` limit flags, one per :class:`DiffLimits` field."""
    for name, (flag, kind, text) in reversed(DIFF_LIMIT_FLAGS.items()):
        default = getattr(_LIMITS, name)
        func = click.option(
            flag,
            f"diff_{name}",
            type=kind,
            default=format_size(default) if kind is SIZE else default,
            show_default=True,
            help=text,
        )(func)
    return func


@click.command(cls=PodkitCommand)
@click.option(
    "--listen",
    type=HOSTPORT,
    default="127.0.0.1:8080",
    show_default=True,
    help="Address to serve HTTP on.",
)
@click.option("--primary", metavar="URL", help="The primary arm, e.g. http://127.0.0.1:8001.")
@click.option("--candidate", metavar="URL", help="The candidate arm, e.g. http://127.0.0.1:8002.")
@click.option(
    "--weight",
    default="0%",
    metavar="PERCENT",
    show_default=True,
    help="The candidate's share of traffic (the primary takes the rest).",
)
@click.option(
    "--sticky",
    default=None,
    metavar="header:NAME|cookie:NAME|client-ip",
    help="Keep each user on one arm (through podkit.hashing): raising the weight moves only "
    "new users to the candidate. Requests without the key are split one by one.",
)
@click.option(
    "--route",
    "routes",
    multiple=True,
    metavar="'MATCH -> ARM'",
    help="Send matching requests to an arm whatever the weights, e.g. "
    "'header:X-Canary=1 -> candidate' (also cookie:, query:, path:/PREFIX, method:); "
    "tried in order, repeatable.",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML file of arms, weights, sticky key and routes (instead of those flags); "
    "re-read when it changes and on SIGHUP.",
)
@click.option("--shadow", metavar="URL", help="Mirror the primary's requests to this upstream.")
@click.option(
    "--shadow-rate",
    default="100%",
    metavar="PERCENT",
    show_default=True,
    help="Fraction of the primary's requests mirrored.",
)
@click.option(
    "--shadow-max-body",
    type=SIZE,
    default=format_size(DEFAULT_SHADOW_MAX_BODY),
    show_default=True,
    help="Requests with a larger (or unsized) body are not mirrored (counted as skipped).",
)
@click.option(
    "--shadow-unsafe",
    is_flag=True,
    help="Mirror unsafe methods too (POST, PUT...): this duplicates their side effects.",
)
@click.option(
    "--shadow-queue",
    type=click.IntRange(1, MAX_SHADOW_QUEUE),
    default=DEFAULT_SHADOW_QUEUE,
    show_default=True,
    help="Copies waiting for the shadow; more are dropped (counted), never waited for.",
)
@click.option(
    "--shadow-concurrency",
    type=click.IntRange(1, MAX_SHADOW_CONCURRENCY),
    default=DEFAULT_SHADOW_CONCURRENCY,
    show_default=True,
    help="Copies in flight to the shadow at once.",
)
@click.option(
    "--shadow-timeout",
    type=DURATION,
    default=format_duration(DEFAULT_SHADOW_TIMEOUT),
    show_default=True,
    help="Time one copy may take; the client never waits for it.",
)
@click.option(
    "--shadow-max-rate",
    default=format_rate(DEFAULT_SHADOW_MAX_RATE),
    metavar="RATE",
    show_default=True,
    help="Copies sent per second at most, evenly spaced (500/s, 30/m; 0: no cap). Spacing "
    "keeps the answers of a slow shadow from arriving in bursts that stall the primary.",
)
@click.option(
    "--diff",
    is_flag=True,
    help="Compare the shadow's answers with the primary's (status, headers, JSON field by "
    "field); GET /diff on the admin port. Without --shadow the candidate is the shadow.",
)
@click.option(
    "--primary-b",
    metavar="URL",
    help="A second primary instance: fields that differ between the two primaries are "
    "noise, not regressions.",
)
@click.option(
    "--diff-ignore-header",
    "diff_ignore",
    multiple=True,
    metavar="NAME",
    help="Header left out of comparisons, besides "
    + ", ".join(sorted(h.title() for h in DEFAULT_IGNORED_HEADERS))
    + "; repeatable.",
)
@diff_limit_options
@click.option(
    "--ramp",
    default=None,
    metavar="STEPS",
    help="Step the candidate's weight through these, e.g. 5%,25%,50%,100%, while it "
    "passes --rollback-on.",
)
@click.option(
    "--every",
    type=DURATION,
    default=format_duration(DEFAULT_EVERY),
    show_default=True,
    help="Length of one ramp step (the window the rules are judged over).",
)
@click.option(
    "--rollback-on",
    default=None,
    metavar="RULES",
    help=f"Rules that set the candidate's weight to 0 at once, relative to the primary "
    f"over the same window: 5xx>1%, p99>1.5x, diff>0.5% (with --diff). Default with --ramp: "
    f"{DEFAULT_ROLLBACK_ON}.",
)
@click.option(
    "--ramp-min-requests",
    type=click.IntRange(1, 1_000_000),
    default=DEFAULT_MIN_REQUESTS,
    show_default=True,
    help="Requests a window needs on each side before a rule is judged; a window without "
    "them holds the ramp.",
)
@click.option(
    "--trusted-proxy",
    "trusted",
    multiple=True,
    metavar="CIDR",
    help="Peer whose X-Forwarded-For is believed (client-ip stickiness) and extended; repeatable.",
)
@upstream_timeout_options(
    connect_timeout=DEFAULT_CONNECT_TIMEOUT, response_timeout=DEFAULT_TIMEOUT, peer="arm"
)
@access_log_options
@server_limit_options
@runtime_options
def command(
    listen: HostPort,
    primary: str | None,
    candidate: str | None,
    weight: str,
    sticky: str | None,
    routes: tuple[str, ...],
    config: Path | None,
    shadow: str | None,
    shadow_rate: str,
    shadow_max_body: int,
    shadow_unsafe: bool,
    shadow_queue: int,
    shadow_concurrency: int,
    shadow_timeout: float,
    shadow_max_rate: str,
    diff: bool,
    primary_b: str | None,
    diff_ignore: tuple[str, ...],
    diff_max_routes: int,
    diff_max_paths: int,
    diff_examples: int,
    diff_example_body: int,
    diff_max_differences: int,
    diff_max_depth: int,
    diff_max_body: int,
    ramp: str | None,
    every: float,
    rollback_on: str | None,
    ramp_min_requests: int,
    trusted: tuple[str, ...],
    connect_timeout: float,
    response_timeout: float,
    source_address: str | None,
    limits: ServerLimits,
    access_log: AccessLogSettings,
    runtime: RuntimeOptions,
) -> int:
    """Split traffic between a primary and candidates: weighted, sticky canaries, shadow
    copies with response diffs, and progressive delivery with automatic rollback.

    The admin endpoint serves GET /split (weights, ramp state, per-arm counts),
    POST /split/weights ({"candidate": "20%"}) and GET /diff.
    """
    ctx = click.get_current_context()
    if config is not None:
        clash = [
            flag
            for name, flag in (
                ("primary", "--primary"),
                ("candidate", "--candidate"),
                ("weight", "--weight"),
                ("sticky", "--sticky"),
                ("routes", "--route"),
            )
            if _given(ctx, name)
        ]
        if clash:
            raise click.UsageError(f"{', '.join(clash)}: give these in the --config file instead")
        table = read_split_config(config)
    else:
        if primary is None:
            raise click.UsageError("give --primary URL (and --candidate URL), or --config FILE")
        if ramp is not None and _given(ctx, "weight"):
            raise click.UsageError("--weight and --ramp: the ramp sets the weight; give one")
        table = table_from_flags(
            primary=primary,
            candidate=candidate,
            weight=parse_percent(weight, field="--weight"),
            routes=routes,
            sticky=sticky,
        )
    names = [a.name for a in table.arms]
    shadow_flags = [
        flag
        for name, flag in (
            ("shadow_rate", "--shadow-rate"),
            ("shadow_max_body", "--shadow-max-body"),
            ("shadow_unsafe", "--shadow-unsafe"),
            ("shadow_queue", "--shadow-queue"),
            ("shadow_concurrency", "--shadow-concurrency"),
            ("shadow_timeout", "--shadow-timeout"),
            ("shadow_max_rate", "--shadow-max-rate"),
        )
        if _given(ctx, name)
    ]
    if shadow is None and diff and len(names) > 1:
        shadow = next(a.url for a in table.arms if a.name != names[0])
    if shadow is None and shadow_flags:
        raise click.UsageError(f"{', '.join(shadow_flags)}: give --shadow URL (or --diff)")
    if diff and shadow is None:
        raise click.UsageError("--diff compares a shadow with the primary: give --shadow URL")
    if primary_b is not None and not diff:
        raise click.UsageError("--primary-b tells noise in diffs: add --diff")
    if diff_ignore and not diff:
        raise click.UsageError("--diff-ignore-header applies to diffs: add --diff")
    flag_values = {
        "max_routes": diff_max_routes,
        "max_paths": diff_max_paths,
        "examples": diff_examples,
        "example_body": diff_example_body,
        "max_differences": diff_max_differences,
        "max_depth": diff_max_depth,
        "max_body": diff_max_body,
    }
    given = {name: v for name, v in flag_values.items() if _given(ctx, f"diff_{name}")}
    if given and not diff:
        flags = ", ".join(DIFF_LIMIT_FLAGS[name][0] for name in given)
        raise click.UsageError(f"{flags}: these bound diffs: add --diff")
    # The config file's diff: section (checked when it was read), then the flags over it.
    bounds = diff_limits(
        {**table.diff_limits, **given},
        fields={name: flag for name, (flag, _, _) in DIFF_LIMIT_FLAGS.items()},
    )
    shadow_options = None
    if shadow is not None:
        rate = parse_percent(shadow_rate, field="--shadow-rate")
        if shadow_timeout <= 0:
            raise ConfigError("must be more than 0", path="--shadow-timeout")
        shadow_options = ShadowOptions(
            url=check_url(shadow, field="--shadow"),
            rate=rate,
            max_body=shadow_max_body,
            unsafe=shadow_unsafe,
            queue=shadow_queue,
            concurrency=shadow_concurrency,
            timeout=shadow_timeout,
            max_rate=(
                0.0
                if shadow_max_rate.strip() in ("0", "off")
                else parse_rate(shadow_max_rate, field="--shadow-max-rate")
            ),
        )
    ramp_options = None
    if ramp is not None:
        if len(names) < 2:
            raise click.UsageError("--ramp steps a candidate's weight: give --candidate URL")
        if every <= 0:
            raise ConfigError("must be more than 0", path="--every")
        rules = parse_rollback_rules(
            rollback_on if rollback_on is not None else DEFAULT_ROLLBACK_ON
        )
        if any(r.kind == "diff" for r in rules) and not diff:
            raise click.UsageError("--rollback-on diff>...: add --diff")
        ramp_options = RampOptions(
            steps=parse_steps(ramp),
            every=every,
            rules=rules,
            arm=names[1],
            min_requests=ramp_min_requests,
        )
        table = dataclasses.replace(
            table, weights={**table.weights, names[1]: ramp_options.steps[0]}
        )
    elif rollback_on is not None or _given(ctx, "every") or _given(ctx, "ramp_min_requests"):
        raise click.UsageError("--rollback-on, --every and --ramp-min-requests apply to --ramp")
    options = SplitOptions(
        host=listen.host,
        port=listen.port,
        table=table,
        config=config,
        shadow=shadow_options,
        diff=diff,
        primary_b=check_url(primary_b, field="--primary-b") if primary_b else None,
        diff_ignore_headers=DEFAULT_IGNORED_HEADERS | {h.strip().lower() for h in diff_ignore},
        diff_limits=bounds,
        ramp=ramp_options,
        trusted_proxies=parse_networks(trusted),
        timeout=response_timeout,
        connect_timeout=connect_timeout,
        source_address=source_address,
        limits=limits,
        access_log=access_log,
    )

    async def main(rt: Runtime) -> None:
        await serve_split(rt, options)

    return run_component("split", main, runtime)
