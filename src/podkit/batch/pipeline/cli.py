"""``podkit pipeline``: run a pipeline file and look at its topics, dead letters and groups."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from podkit.batch.pipeline.local import LocalRunner, RunResult
from podkit.batch.pipeline.model import PipelineSpec, load_pipeline, parse_set
from podkit.batch.pipeline.progress import ProgressPrinter
from podkit.batch.pipeline.store import DEFAULT_MAX_DELIVERIES
from podkit.cli import PodkitGroup
from podkit.runtime import Runtime, RuntimeOptions, run_component
from podkit.runtime.cli_options import DURATION, runtime_options

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
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run the store holds (SQLite, Redis) instead of starting afresh.",
)
def run(file: str, sets: tuple[str, ...], progress: str, interval: float, resume: bool) -> None:
    """Run the pipeline in FILE until every topic is empty; write its outputs.

    With topics.backend memory:// every stage runs in this process; with sqlite:/// or
    redis:// each stage runs in worker processes (its `workers`) sharing the store, and a
    worker that dies is replaced without losing an item. Exits 1 when items were
    dead-lettered. Prints one summary line: items per stage, dead letters and seconds.
    """
    spec = _load(file, sets)
    streams = [name for name, i in spec.inputs.items() if i.stream]
    if streams:
        raise click.UsageError(
            f"{file}: inputs.{streams[0]} is a stream (stream: true), which a run would never "
            "see the end of: run the stages with `podkit pipeline work` and add items with "
            "`podkit pipeline put`"
        )
    if interval <= 0:
        raise click.BadParameter("must be positive", param_hint="'--interval'")
    mode = progress
    if mode == "auto":
        mode = "table" if sys.stderr.isatty() else "json"
    printer = None if mode == "none" else ProgressPrinter(sys.stderr, table=mode == "table")
    result: RunResult
    if spec.topics.backend == "memory://":
        if resume:
            raise click.BadParameter(
                "an in-process run keeps nothing to resume", param_hint="'--resume'"
            )
        result = LocalRunner(spec, on_progress=printer, interval=interval).run()
    else:
        from podkit.batch.pipeline.processes import ProcessRunner

        result = ProcessRunner(
            spec, file=file, sets=sets, resume=resume, on_progress=printer, interval=interval
        ).run()
    click.echo(_summary(result))
    if result.dead:
        sys.exit(1)


@group.command()
@_file
@_set
@click.option("--stage", required=True, help="The stage this worker runs.")
@click.option(
    "--index", type=click.IntRange(0), default=0, show_default=True, help="This worker's number."
)
@click.option(
    "--count",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="How many workers the stage has (a sharded input is split between them).",
)
@click.option(
    "--max-deliveries",
    type=click.IntRange(1),
    default=DEFAULT_MAX_DELIVERIES,
    show_default=True,
    help="Leases of one item without a commit (its workers died) before it is a dead letter.",
)
@runtime_options
def work(
    file: str,
    sets: tuple[str, ...],
    stage: str,
    index: int,
    count: int,
    max_deliveries: int,
    runtime: RuntimeOptions,
) -> int:
    """Run one worker of STAGE against the pipeline's store until SIGTERM.

    `podkit pipeline run` starts these itself; run them by hand (or as pod-file components)
    to spread a pipeline over machines with a Redis store. With --admin, /metrics has the
    stage's podkit_pipeline_* figures.
    """
    from podkit.batch.pipeline.worker import WorkerOptions, serve_stage

    spec = _store_spec(file, sets)
    if stage not in spec.stages:
        raise click.BadParameter(
            f"{stage!r} is not a stage of {file} ({', '.join(spec.stages)})", param_hint="'--stage'"
        )
    if index >= count:
        raise click.BadParameter(f"must be below --count ({count})", param_hint="'--index'")
    options = WorkerOptions(
        index=index,
        count=count,
        batch=spec.topics.batch,
        visibility=spec.topics.visibility,
        max_pending=spec.topics.max_pending,
        max_deliveries=max_deliveries,
    )

    async def main(rt: Runtime) -> None:
        await serve_stage(rt, spec, stage, options)

    return run_component(f"pipeline-{stage}", main, runtime)


@group.command()
@_file
@_set
def feed(file: str, sets: tuple[str, ...]) -> None:
    """Put the inputs' items into the store and seal their groups, once.

    For pipelines whose stage workers run on their own (pod-file components): `run` does
    this itself. Feeding a pipeline that was fed already does nothing.
    """
    from podkit.batch.pipeline.processes import feed_inputs, store_for

    spec = _store_spec(file, sets)
    store = store_for(spec)
    try:
        fed = feed_inputs(spec, store)
    finally:
        store.close()
    click.echo("fed" if fed else "fed already")


@group.command()
@_file
@_set
@click.option("--input", "input_name", required=True, help="The stream input to add to.")
@click.option(
    "--path",
    "as_path",
    is_flag=True,
    help="Each VALUE is a file's path, put as {\"path\": VALUE} like a dir input's items.",
)
@click.argument("values", nargs=-1, required=True)
def put(
    file: str, sets: tuple[str, ...], input_name: str, as_path: bool, values: tuple[str, ...]
) -> None:
    """Add VALUES to a stream input (`stream: true`) while the stage workers run.

    Each VALUE is JSON when it parses, else text. The items join the input's group, which
    stays open. All are put in one step; run it again after a failure (stages are at least
    once). A feeder for stage workers run as pod-file components, such as a work queue's
    workers. Prints `put N`.
    """
    from podkit.batch.pipeline.processes import store_for

    spec = _store_spec(file, sets)
    input_spec = spec.inputs.get(input_name)
    if input_spec is None:
        raise click.BadParameter(
            f"{input_name!r} is not an input of {file} ({', '.join(spec.inputs) or 'none'})",
            param_hint="'--input'",
        )
    if not input_spec.stream:
        raise click.BadParameter(
            f"inputs.{input_name} of {file} is not a stream input (stream: true): its items "
            "come from the file and `podkit pipeline feed`",
            param_hint="'--input'",
        )
    items: list[tuple[str, str, Any]] = []
    for value in values:
        item: Any
        if as_path:
            item = {"path": value}
        else:
            try:
                item = json.loads(value)
            except ValueError:
                item = value
        items.append((input_name, input_spec.group, item))
    store = store_for(spec)
    try:
        store.put(items)
    finally:
        store.close()
    click.echo(f"put {len(items)}")


def _store_spec(file: str, sets: tuple[str, ...]) -> PipelineSpec:
    spec = _load(file, sets)
    if spec.topics.backend == "memory://":
        raise click.UsageError(
            f"{file}: topics.backend is memory://: an in-process run keeps no state"
        )
    return spec


@group.command()
@_file
@_set
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
def status(file: str, sets: tuple[str, ...], as_json: bool) -> None:
    """Per-stage counts (in, out, pending, retries, dead, fired), groups and workers."""
    from podkit.batch.pipeline.local import stage_order
    from podkit.batch.pipeline.processes import stage_subs, stats_of, store_for

    spec = _store_spec(file, sets)
    store = store_for(spec, read_only=True)
    try:
        order = stage_order(spec)
        stats = stats_of(
            store.counts(order, stage_subs(spec)), {n: s.kind for n, s in spec.stages.items()}
        )
        groups = store.groups()
        workers = store.workers()
    finally:
        store.close()
    if as_json:
        click.echo(
            _json(
                {
                    "stages": [s.as_dict() for s in stats],
                    "groups": {
                        name: {
                            "created": g.created,
                            "done": g.done,
                            "failed": g.failed,
                            "sealed": g.sealed,
                            "outstanding": g.outstanding,
                        }
                        for name, g in groups.items()
                    },
                    "workers": {n: {"pid": p, "heartbeat": b} for n, (p, b) in workers.items()},
                }
            )
        )
        return
    click.echo(
        f"{'stage':<14} {'kind':<8} {'in':>10} {'out':>10} {'pending':>9} {'retries':>7} "
        f"{'dead':>6} {'fired':>5}"
    )
    for s in stats:
        click.echo(
            f"{s.name[:14]:<14} {s.kind:<8} {s.items_in:>10} {s.items_out:>10} {s.pending:>9} "
            f"{s.retries:>7} {s.dead:>6} {s.fired:>5}"
        )
    for name, g in groups.items():
        state = "sealed" if g.sealed else "open"
        click.echo(
            f"group {name}: {state}, {g.created} children, {g.done} done, {g.failed} failed, "
            f"{g.outstanding} outstanding"
        )


@group.command()
@_file
@_set
@click.option("--stage", default=None, help="Only this stage's dead letters.")
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="At most this many.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dead(file: str, sets: tuple[str, ...], stage: str | None, limit: int, as_json: bool) -> None:
    """List dead letters: items a stage gave up on, with the reason, oldest first."""
    from podkit.batch.pipeline.processes import store_for

    spec = _store_spec(file, sets)
    store = store_for(spec, read_only=True)
    try:
        records = store.dead(stage, limit=limit)
    finally:
        store.close()
    for r in records:
        if as_json:
            click.echo(
                _json(
                    {
                        "stage": r.stage,
                        "id": r.id,
                        "group": r.group,
                        "value": r.value,
                        "error": r.error,
                    }
                )
            )
        else:
            click.echo(f"{r.stage} {r.id} {r.group} {_json(r.value)[:80]} {r.error}")


@group.command()
@_file
@_set
@click.option("--stage", default=None, help="Only this stage's dead letters.")
@click.option("--id", "ids", multiple=True, help="Only these dead letters (repeatable).")
def redrive(file: str, sets: tuple[str, ...], stage: str | None, ids: tuple[str, ...]) -> None:
    """Put dead letters back on their topics; `run --resume` (or running workers) takes them.

    Their groups count them as outstanding again, so a barrier waits for them.
    """
    from podkit.batch.pipeline.processes import store_for

    spec = _store_spec(file, sets)
    store = store_for(spec)
    try:
        moved = store.redrive(stage, list(ids) or None)
    finally:
        store.close()
    click.echo(f"{moved} redriven")


def _summary(result: RunResult) -> str:
    parts = [f"{s.name}={s.items_in}" for s in result.stages.values()]
    line = f"done in {result.seconds:.2f}s: items in {' '.join(parts)}; dead {len(result.dead)}"
    return line


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
