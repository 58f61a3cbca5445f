"""A stage worker: lease a batch from the stage's subscriptions, run it, commit it at once.

Decide, then act: the worker runs the stage's logic on a leased batch and builds a
:class:`~podkit.batch.pipeline.store.Step` (outputs, dead letters, accumulators); the store
applies it in one transaction that first checks the worker still holds every message. A
handler that raises is retried at once up to the stage's ``max_attempts``, then its item is
a dead letter. A worker killed at any point loses nothing: its batch is leased again when
the visibility timeout passes (and after ``max_deliveries`` such leases it is dead-lettered).

Barrier stages (join, reduce) read the accumulators of the batch's keys, combine, and
commit with the version they read (another worker's commit in between makes them read and
combine again), then try to fire the batch's groups; when idle they try every open group,
since the last child of a group may finish in another stage.

Several workers of one stage share its subscriptions; when a stage reads several topics
(a sharder's shards) and has as many workers or fewer, worker ``k`` of ``W`` reads the
topics ``i`` with ``i % W == k``, so each shard's keys are combined by one worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from podkit.batch.pipeline.barrier import Outcome, decide
from podkit.batch.pipeline.model import PipelineSpec
from podkit.batch.pipeline.stages import StageLogic
from podkit.batch.pipeline.store import (
    DEFAULT_MAX_DELIVERIES,
    Conflict,
    Message,
    PipelineStore,
    Step,
    Topology,
    open_store,
    sub_name,
)
from podkit.runtime import Runtime

IDLE_POLL_MIN = 0.01  # seconds between empty leases at first...
IDLE_POLL_MAX = 0.25  # ...growing to this while the stage stays idle
BACKPRESSURE_POLL = 0.05  # seconds between checks of a full output topic
HEARTBEAT_EVERY = 1.0  # seconds between the worker's heartbeats in the store
MAX_CONFLICT_RETRIES = 50  # re-reads of a barrier's accumulators before leaving the batch
MAX_COMMIT_OUTPUTS = 20_000  # outputs one commit should write: a splitter's batch shrinks to fit
FANOUT_SMOOTHING = 0.5  # weight of the last batch in the running outputs-per-item figure


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How one worker process runs.

    Attributes:
        index: this worker's number among the stage's workers (0-based).
        count: how many workers the stage has.
        batch: messages per lease.
        visibility: seconds a lease lasts.
        max_pending: an output subscription holding more waits before the worker goes on.
        max_deliveries: leases without a commit before a message is dead-lettered.
    """

    index: int = 0
    count: int = 1
    batch: int = 100
    visibility: float = 30.0
    max_pending: int = 10_000
    max_deliveries: int = DEFAULT_MAX_DELIVERIES


def worker_subs(spec: PipelineSpec, stage: str, index: int, count: int) -> list[str]:
    """The subscriptions worker ``index`` of ``count`` reads (see the module)."""
    topics = spec.stage_inputs(stage)
    if count > 1 and len(topics) >= count:
        topics = [t for i, t in enumerate(topics) if i % count == index]
    return [sub_name(t, stage) for t in topics]


class StageMetrics:
    """A stage worker's Prometheus metrics, labelled by stage."""

    def __init__(self, registry: CollectorRegistry, stage: str) -> None:
        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, ["stage"], registry=registry).labels(stage)

        self.items_in = counter("podkit_pipeline_items_in", "Items this worker committed.")
        self.items_out = counter("podkit_pipeline_items_out", "Items this worker produced.")
        self.retries = counter("podkit_pipeline_retries", "Failed attempts that were retried.")
        self.dead = counter("podkit_pipeline_dead", "Items this worker dead-lettered.")
        self.fired = counter("podkit_pipeline_barriers_fired", "Group barriers this worker fired.")
        self.lost = counter(
            "podkit_pipeline_commits_lost", "Batches whose lease was taken by another worker."
        )
        self.pending = Gauge(
            "podkit_pipeline_pending",
            "Items waiting or leased in this worker's subscriptions.",
            ["stage"],
            registry=registry,
        ).labels(stage)


class StageWorker:
    """Runs one stage against a store until ``stop()`` returns true.

    Args:
        spec: the pipeline.
        logic: the stage's logic (handlers loaded).
        store: the shared store.
        options: batch, visibility, partition.
        clock: wall clock (leases are compared across processes).
        sleep: how to wait (tests pass a fake).
    """

    def __init__(
        self,
        spec: PipelineSpec,
        logic: StageLogic,
        store: PipelineStore,
        options: WorkerOptions,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        metrics: StageMetrics | None = None,
    ) -> None:
        self.spec = spec
        self.metrics = metrics
        self.logic = logic
        self.store = store
        self.options = options
        self.clock = clock
        self.sleep = sleep
        self.subs = worker_subs(spec, logic.name, options.index, options.count)
        self.out_subs = [sub_name(t, stage) for t in logic.outputs for stage in spec.consumers(t)]
        self.name = f"{logic.name}.{options.index}"
        self.processed = 0
        self._fanout: float | None = None  # outputs per item so far (None: not known yet)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        if logic.runs_commands and logic.concurrency > 1:
            self._pool = concurrent.futures.ThreadPoolExecutor(logic.concurrency)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def serve(self, stop: Callable[[], bool]) -> int:
        """Work until ``stop()``; returns the number of messages committed."""
        idle = IDLE_POLL_MIN
        next_beat = 0.0
        while not stop():
            now = self.clock()
            if now >= next_beat:
                self.store.heartbeat(self.name, os.getpid(), now=now)
                if self.metrics is not None:
                    self.metrics.pending.set(self.store.backlog(self.subs))
                next_beat = now + HEARTBEAT_EVERY
            if self.out_subs and self.store.backlog(self.out_subs) >= self.options.max_pending:
                self.sleep(BACKPRESSURE_POLL)  # producers wait: the topic is full
                continue
            if not self.run_once():
                if self.logic.barrier:
                    for group in self.store.open_barriers(self.logic.name):
                        self._fire(group)
                self.sleep(idle)
                idle = min(idle * 2, IDLE_POLL_MAX)
            else:
                idle = IDLE_POLL_MIN
        return self.processed

    def run_once(self) -> bool:
        """Lease one batch, process and commit it; False when there was nothing to lease."""
        messages = self.store.lease(
            self.subs,
            self._batch_size(),
            now=self.clock(),
            visibility=self.options.visibility,
            token=uuid.uuid4().hex,
            max_deliveries=self.options.max_deliveries,
        )
        if not messages:
            return False
        step: Step | None
        if self.logic.barrier:
            step = self._absorb(messages)
        else:
            applied = self._apply(messages)
            committed = self.store.commit(self.logic.name, applied, now=self.clock())
            step = applied if committed else None
        if step is None:
            if self.metrics is not None:
                self.metrics.lost.inc()
            return True
        self.processed += len(messages)
        outputs = sum(len(out) for _, out in step.done)
        fanout = outputs / len(messages)
        self._fanout = (
            fanout
            if self._fanout is None
            else FANOUT_SMOOTHING * fanout + (1 - FANOUT_SMOOTHING) * self._fanout
        )
        if self.metrics is not None:
            self.metrics.items_in.inc(len(messages))
            self.metrics.items_out.inc(outputs)
            self.metrics.retries.inc(step.retries)
            self.metrics.dead.inc(len(step.dead))
        if self.logic.barrier:
            for group in {m.group for m in messages}:
                self._fire(group)
        return True

    def _batch_size(self) -> int:
        """Items to lease: the configured batch, fewer when each item makes many outputs (a
        splitter's commit stays near MAX_COMMIT_OUTPUTS rows); one while that is unknown."""
        if self.logic.barrier:
            return self.options.batch
        if self._fanout is None:
            return 1
        return max(1, min(self.options.batch, int(MAX_COMMIT_OUTPUTS / max(self._fanout, 1.0))))

    def _attempt(self, fn: Callable[[Any], Any], value: Any) -> tuple[Any, str | None, int]:
        """Run ``fn(value)`` up to max_attempts times: (result, error or None, retries)."""
        retries = 0
        while True:
            try:
                return fn(value), None, retries
            except Exception as exc:  # a handler's failure is the item's, never the worker's
                if retries + 1 >= self.logic.max_attempts:
                    return None, f"{type(exc).__name__}: {exc}", retries
                retries += 1

    def _apply(self, messages: list[Message]) -> Step:
        step = Step()
        if self._pool is not None:
            results = list(
                self._pool.map(lambda m: self._attempt(self.logic.apply, m.value), messages)
            )
        else:
            results = [self._attempt(self.logic.apply, m.value) for m in messages]
        for message, (outputs, error, retries) in zip(messages, results, strict=True):
            step.retries += retries
            if error is not None:
                step.dead.append((message, error))
            else:
                step.done.append((message, outputs))
        return step

    def _absorb(self, messages: list[Message]) -> Step | None:
        logic = self.logic
        keys: dict[int, str | None] = {}
        missing: dict[int, str] = {}
        for i, m in enumerate(messages):
            try:
                keys[i] = logic.accumulator_key(m.value)
            except Exception as exc:  # no key or group field: the item fails below
                keys[i] = None
                missing[i] = f"{type(exc).__name__}: {exc}"
        pairs = sorted({(m.group, k) for i, m in enumerate(messages) if (k := keys[i]) is not None})
        for _ in range(MAX_CONFLICT_RETRIES):
            stored, version = self.store.accumulators(logic.name, pairs)
            step = Step()
            accs = dict(stored)
            for i, m in enumerate(messages):
                key = keys[i]
                if key is None:
                    step.dead.append((m, missing[i]))
                    continue
                current = accs.get((m.group, key), logic.initial)
                combined, error, retries = self._attempt(partial(logic.combine, current), m.value)
                step.retries += retries
                if error is not None:
                    step.dead.append((m, error))
                    continue
                accs[(m.group, key)] = combined
                step.done.append((m, []))
                step.absorbed[m.group] = step.absorbed.get(m.group, 0) + 1
            step.accumulators = {p: accs[p] for p in pairs if p in accs}
            try:
                committed = self.store.commit(logic.name, step, now=self.clock(), version=version)
            except Conflict:
                continue
            return step if committed else None
        return None

    def _fire(self, group: str) -> Outcome | None:
        logic = self.logic
        outcome = self.store.fire(
            logic.name,
            group,
            decide=lambda state: decide(state, logic.policy),
            results=lambda g, outcome, accs, counts: logic.results(g, outcome.value, accs, counts),
            outputs=logic.outputs,
        )
        if outcome is not None and self.metrics is not None:
            self.metrics.fired.inc()
        return outcome


async def serve_stage(rt: Runtime, spec: PipelineSpec, stage: str, options: WorkerOptions) -> None:
    """Run a stage worker as a component until the runtime drains.

    The worker loop is synchronous (handlers are plain functions) and runs on a daemon
    thread that owns its store connection; draining lets it finish and commit its batch.
    """
    logic = StageLogic(spec, stage)
    metrics = StageMetrics(rt.registry, stage)
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[int] = loop.create_future()
    stop = threading.Event()
    holder: list[StageWorker] = []

    def report(result: int | BaseException) -> None:
        if finished.done():
            return
        if isinstance(result, BaseException):
            finished.set_exception(result)
        else:
            finished.set_result(result)

    def run() -> None:
        try:
            store = open_store(spec.topics.backend, spec.name, Topology.of(spec))
            worker = StageWorker(spec, logic, store, options, metrics=metrics)
            holder.append(worker)
            try:
                result: int | BaseException = worker.serve(stop.is_set)
            finally:
                worker.close()
                store.close()
        except BaseException as exc:  # handed to the event loop, which raises it
            result = exc
        loop.call_soon_threadsafe(report, result)

    rt.add_status(
        lambda: {
            "summary": f"stage {stage}: {holder[0].processed if holder else 0} items",
            "stage": stage,
            "processed": holder[0].processed if holder else 0,
        }
    )
    # A daemon thread: a forced stop (second SIGTERM) must not wait for a running handler.
    threading.Thread(target=run, name=f"pipeline-{stage}", daemon=True).start()
    rt.set_ready()

    async def stop_when_draining() -> None:
        await rt.wait_draining()
        stop.set()

    draining = asyncio.create_task(stop_when_draining())
    try:
        await finished
    finally:
        stop.set()
        draining.cancel()
        await asyncio.gather(draining, return_exceptions=True)
