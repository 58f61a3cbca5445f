"""The process runner: one worker process per stage worker, a coordinator that feeds and watches.

``podkit pipeline run FILE`` with a SQLite or Redis ``topics.backend`` starts, for every
stage, ``workers`` processes of ``podkit pipeline work FILE --stage NAME --index K``. The
coordinator (this module) puts the inputs and seals their groups in one step, replaces a
worker that dies (a crash or a SIGKILL loses no item: see :mod:`podkit.batch.pipeline.
worker`), reports progress, and when no message is left and no barrier is open, stops the
workers and writes the outputs from the store.

``--resume`` continues the run the store holds (after the coordinator itself died);
without it a run starts from an empty pipeline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podkit.batch.pipeline.local import (
    DeadLetter,
    RunResult,
    StageStats,
    list_input,
    stage_order,
    write_outputs,
)
from podkit.batch.pipeline.model import PipelineSpec
from podkit.batch.pipeline.store import PipelineStore, StageCounts, Topology, open_store, sub_name
from podkit.errors import PodkitError

POLL_INTERVAL = 0.1  # seconds between the coordinator's looks at the store and its workers
STOP_GRACE = 10.0  # seconds workers get to finish their batch after SIGTERM
MAX_RESTARTS = 1000  # worker replacements in one run before the run fails (a crash loop)


class PipelineFailed(PodkitError):
    """A run could not finish (its workers keep dying, or it was stopped)."""


@dataclass(slots=True)
class WorkerProcess:
    """One worker process the coordinator owns."""

    stage: str
    index: int
    count: int
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0


@dataclass(slots=True)
class ProcessRun:
    """Statistics of a process run beyond the stage counts."""

    restarts: int = 0
    workers: list[WorkerProcess] = field(default_factory=list)


def store_for(spec: PipelineSpec, *, read_only: bool = False) -> PipelineStore:
    """The shared store of a pipeline file."""
    return open_store(spec.topics.backend, spec.name, Topology.of(spec), read_only=read_only)


def stage_subs(spec: PipelineSpec) -> dict[str, list[str]]:
    """Each stage's subscriptions."""
    return {name: [sub_name(t, name) for t in spec.stage_inputs(name)] for name in spec.stages}


def feed_inputs(spec: PipelineSpec, store: PipelineStore) -> bool:
    """Put every input's items and seal their groups (False: fed already)."""
    items: list[tuple[str, str, Any]] = []
    groups: list[str] = []
    for name, input_spec in spec.inputs.items():
        if input_spec.stream:  # its group stays open: `podkit pipeline put` adds to it
            continue
        groups.append(input_spec.group)
        items.extend(
            (name, input_spec.group, value)
            for value in list_input(name, input_spec, source=spec.source)
        )
    return store.feed(items, groups)


def stats_of(counts: Sequence[StageCounts], kinds: dict[str, str]) -> list[StageStats]:
    """Stage counts from the store as the progress printer takes them."""
    return [
        StageStats(
            c.stage,
            kinds[c.stage],
            items_in=c.items_in,
            items_out=c.items_out,
            retries=c.retries,
            dead=c.dead,
            pending=c.pending + c.leased,
            fired=c.fired,
        )
        for c in counts
    ]


class ProcessRunner:
    """Run a pipeline with worker processes sharing its store.

    Args:
        spec: the pipeline (its ``topics.backend`` is a SQLite or Redis URL).
        file: the pipeline file, for the workers' command lines.
        sets: the ``--set`` pairs, passed on to the workers.
        resume: continue what the store holds instead of starting afresh.
        on_progress: called with per-stage counts every ``interval`` seconds and at the end.
        on_workers: called after workers start or are replaced (the chaos tests use it).
        python: the interpreter of the workers.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        file: str,
        sets: Sequence[str] = (),
        resume: bool = False,
        on_progress: Callable[[list[StageStats]], None] | None = None,
        on_workers: Callable[[list[WorkerProcess]], None] | None = None,
        interval: float = 1.0,
        python: str = sys.executable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.file = str(Path(file).resolve())
        self.sets = list(sets)
        self.resume = resume
        self.on_progress = on_progress
        self.on_workers = on_workers
        self.interval = interval
        self.python = python
        self.clock = clock
        self.order = stage_order(spec)
        self.kinds = {name: spec.stages[name].kind for name in spec.stages}
        self.subs = stage_subs(spec)
        self.all_subs = [s for subs in self.subs.values() for s in subs]
        self.info = ProcessRun()
        self.stopping = False

    def _argv(self, worker: WorkerProcess) -> list[str]:
        argv = [self.python, "-m", "podkit", "pipeline", "work", self.file]
        argv += [
            "--stage",
            worker.stage,
            "--index",
            str(worker.index),
            "--count",
            str(worker.count),
        ]
        for pair in self.sets:
            argv += ["--set", pair]
        # The coordinator reports progress; workers only say what goes wrong.
        argv += ["--log-level", "warning"]
        return argv

    def _start(self, worker: WorkerProcess) -> None:
        worker.process = subprocess.Popen(self._argv(worker), stdin=subprocess.DEVNULL)

    def run(self) -> RunResult:
        """Run to the end; write the outputs.

        Raises:
            PipelineFailed: workers kept dying (more than ``MAX_RESTARTS`` replacements).
            BackendError: the store failed.
        """
        started = self.clock()
        store = store_for(self.spec)
        try:
            if not self.resume:
                store.reset()
            feed_inputs(self.spec, store)
            self.info.workers = [
                WorkerProcess(name, k, self.spec.stages[name].workers)
                for name in self.order
                for k in range(self.spec.stages[name].workers)
            ]
            for worker in self.info.workers:
                self._start(worker)
            if self.on_workers is not None:
                self.on_workers(self.info.workers)
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            try:
                self._watch(store)
            finally:
                signal.signal(signal.SIGTERM, previous)
                self._stop_workers()
            if self.stopping:
                raise PipelineFailed("stopped by SIGTERM; `run --resume` continues")
            outputs = {topic: store.outputs(topic) for topic in self.spec.outputs}
            write_outputs(self.spec, outputs)
            stats = stats_of(store.counts(self.order, self.subs), self.kinds)
            if self.on_progress is not None:
                self.on_progress(stats)
            dead = [
                DeadLetter(d.stage, d.group, d.value, d.error, 0)
                for d in store.dead(limit=1_000_000)
            ]
            groups = store.groups()
        finally:
            store.close()
        return RunResult(
            stages={s.name: s for s in stats},
            dead=dead,
            groups=groups,
            outcomes={},
            outputs=outputs,
            seconds=self.clock() - started,
        )

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _finished(self, store: PipelineStore) -> bool:
        # Barriers first: a barrier that fires writes its results in the same step that
        # closes it, so once no barrier is open, the backlog read after sees its results.
        if any(
            store.open_barriers(name)
            for name in self.order
            if self.kinds[name] in ("join", "reduce")
        ):
            return False
        return store.backlog(self.all_subs) == 0

    def _watch(self, store: PipelineStore) -> None:
        next_progress = self.clock() + self.interval
        while not self.stopping:
            replaced = False
            for worker in self.info.workers:
                process = worker.process
                if process is not None and process.poll() is not None:
                    self.info.restarts += 1
                    worker.restarts += 1
                    if self.info.restarts > MAX_RESTARTS:
                        raise PipelineFailed(
                            f"workers died {self.info.restarts} times; last: stage "
                            f"{worker.stage} exited with status {process.returncode}"
                        )
                    self._start(worker)
                    replaced = True
            if replaced and self.on_workers is not None:
                self.on_workers(self.info.workers)
            if self._finished(store):
                return
            if self.on_progress is not None and self.clock() >= next_progress:
                next_progress = self.clock() + self.interval
                self.on_progress(stats_of(store.counts(self.order, self.subs), self.kinds))
            time.sleep(POLL_INTERVAL)

    def _stop_workers(self) -> None:
        for worker in self.info.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for worker in self.info.workers:
            if worker.process is None:
                continue
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()


def worker_pids(workers: Sequence[WorkerProcess]) -> list[int]:
    """The pids of the running worker processes."""
    return [w.process.pid for w in workers if w.process is not None and w.process.poll() is None]


def kill(pid: int) -> None:
    """SIGKILL a process (gone already is fine)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
