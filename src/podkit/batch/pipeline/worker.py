"""A stage worker: lease a batch from the stage's subscriptions, run it, commit it at once.

Decide, then act: the worker runs the stage's logic on a leased batch and builds a
:class:`~podkit.batch.pipeline.store.Step` (outputs, dead letters, accumulators); the store
applies it in one transaction that first checks the worker still holds every message. The
items of a batch whose handler raises are retried together, round by round after the
stage's backoff (:mod:`~podkit.batch.pipeline.retry`), up to its attempts; then each is a
dead letter. A worker killed at any point loses nothing: its batch is leased again when
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
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from podkit.batch.pipeline.barrier import Outcome, decide
from podkit.batch.pipeline.model import PipelineSpec
from podkit.batch.pipeline.stages import Outputs, StageLogic
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
        random: uniform numbers in ``[0, 1)`` for the backoff's jitter.
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
        random: Callable[[], float] = random.random,
        metrics: StageMetrics | None = None,
    ) -> None:
        self.random = random
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
        wanted = self._batch_size()
        messages = self.store.lease(
            self.subs,
            wanted,
            now=self.clock(),
            visibility=self.options.visibility,
            token=uuid.uuid4().hex,
            max_deliveries=self.options.max_deliveries,
        )
        if not messages:
            return False
        # A pack larger than wanted: the rest goes back in the commit.
        messages, extra = messages[:wanted], messages[wanted:]
        step: Step | None
        if self.logic.barrier:
            step = self._absorb(messages, extra)
        else:
            applied = self._apply(messages)
            applied.requeue = extra
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

    def _wait(self, retry: int) -> None:
        delay = self.logic.retry.delay(retry, self.random())
        if delay > 0:
            self.sleep(delay)

    def _run(self, values: list[Any]) -> list[Outputs | Exception]:
        """The stage on each value: its outputs, or the exception it raised."""
        apply = self.logic.apply

        def one(value: Any) -> Outputs | Exception:
            try:
                return apply(value)
            except Exception as exc:  # a handler's failure is the item's, never the worker's
                return exc

        if self._pool is not None:
            return list(self._pool.map(one, values))
        return [one(v) for v in values]

    def _apply(self, messages: list[Message]) -> Step:
        """Run a batch; items that raise are tried again together, round by round after the
        stage's backoff, until they succeed or run out of attempts."""
        step = Step()
        results = self._run([m.value for m in messages])
        failing = [i for i, r in enumerate(results) if isinstance(r, Exception)]
        for retry in range(1, self.logic.max_attempts):
            if not failing:
                break
            self._wait(retry)
            step.retries += len(failing)
            again = self._run([messages[i].value for i in failing])
            for i, result in zip(failing, again, strict=True):
                results[i] = result
            failing = [i for i in failing if isinstance(results[i], Exception)]
        for message, result in zip(messages, results, strict=True):
            if isinstance(result, Exception):
                step.dead.append((message, f"{type(result).__name__}: {result}"))
            else:
                step.done.append((message, result))
        return step

    def _absorb(self, messages: list[Message], extra: list[Message]) -> Step | None:
        logic = self.logic
        keys: list[str | None] = []
        missing: dict[int, str] = {}
        for i, m in enumerate(messages):
            try:
                keys.append(logic.accumulator_key(m.value))
            except Exception as exc:  # no key or group field: the item fails below
                keys.append(None)
                missing[i] = f"{type(exc).__name__}: {exc}"
        pairs = sorted({(m.group, k) for m, k in zip(messages, keys, strict=True) if k is not None})
        combine = logic.combine
        initial = logic.initial
        for conflicts in range(MAX_CONFLICT_RETRIES):
            stored, version = self.store.accumulators(logic.name, pairs)
            step = Step(requeue=extra)
            accs = dict(stored)
            errors: dict[int, Exception] = {}
            for i, m in enumerate(messages):
                key = keys[i]
                if key is None:
                    continue
                pair = (m.group, key)
                try:
                    accs[pair] = combine(accs.get(pair, initial), m.value)
                except Exception as exc:  # the item's failure: tried again below
                    errors[i] = exc
            for retry in range(1, logic.max_attempts):
                if not errors:
                    break
                if conflicts == 0:  # waited once; after a conflict only combine again
                    self._wait(retry)
                step.retries += len(errors)
                for i in list(errors):
                    m = messages[i]
                    pair = (m.group, keys[i] or "")
                    try:
                        accs[pair] = combine(accs.get(pair, initial), m.value)
                    except Exception as exc:  # the item's failure
                        errors[i] = exc
                    else:
                        del errors[i]
            for i, m in enumerate(messages):
                if i in missing:
                    step.dead.append((m, missing[i]))
                elif i in errors:
                    error = errors[i]
                    step.dead.append((m, f"{type(error).__name__}: {error}"))
                else:
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
