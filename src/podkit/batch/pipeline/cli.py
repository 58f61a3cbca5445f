"""``podkit pipeline``: run a pipeline file and look at its topics, dead letters and groups."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from podkit.batch.pipeline.local import LocalRunner, RunResult
from podkit.batch.pipeline.model import PipelineSpec, load_pipeline, parse_set
from podkit.batch.pipeline.progress import ProgressPrinter
from podkit.cli import PodkitGroup
from podkit.runtime.cli_options import DURATION

DEFAULT_PROGRESS_INTERVAL = 1.0  # seconds between progress lines or table redraws

_file = click.argument("file", type=click.Path(dir_okay=False))
_set = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Fill {KEY} in the pipeline file (repeatable), e.g. --set input=docs/.",
)


def _load(file: str, sets: tuple[str, ...]) -> PipelineSpec:
    return load_pipeline(file, parse_set(list(sets)))


@click.group(name="pipeline", cls=PodkitGroup)
def group() -> None:
    """Event-driven and coordinated batch: stages chained by topics, joins and reduces.

    A pipeline file names inputs, stages (copier, filter, splitter, sharder, merger, map, join,
    reduce) and the topics between them. See docs/pipeline.md.
    """


@group.command()
@_file
@_set
@click.option(
    "--progress",
    type=click.Choice(["auto", "table", "json", "none"]),
    default="auto",
    show_default=True,
    help="Per-stage progress on stderr: a live table on a terminal (auto), JSON lines otherwise.",
)
@click.option(
    "--interval",
    type=DURATION,
    default="1s",
    show_default=True,
    help="Time between progress lines.",
)
def run(file: str, sets: tuple[str, ...], progress: str, interval: float) -> None:
    """Run the pipeline in FILE until every topic is empty; write its outputs.

    Prints one summary line: items per stage, dead letters and seconds.
    """
    spec = _load(file, sets)
    if interval <= 0:
        raise click.BadParameter("must be positive", param_hint="'--interval'")
    mode = progress
    if mode == "auto":
        mode = "table" if sys.stderr.isatty() else "json"
    printer = None if mode == "none" else ProgressPrinter(sys.stderr, table=mode == "table")
    result = LocalRunner(spec, on_progress=printer, interval=interval).run()
    click.echo(_summary(result))
    if result.dead:
        sys.exit(1)


def _summary(result: RunResult) -> str:
    parts = [f"{s.name}={s.items_in}" for s in result.stages.values()]
    line = f"done in {result.seconds:.2f}s: items in {' '.join(parts)}; dead {len(result.dead)}"
    return line


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
