"""Pipelines: copier, filter, splitter, sharder, merger, map, join and reduce stages.

The public API of the event-driven and coordinated batch patterns; the implementation lives
in :mod:`podkit.batch.pipeline`.
"""

from podkit.batch.pipeline.barrier import (
    BarrierPolicy,
    GroupState,
    IllegalGroupStep,
    Outcome,
    decide,
)
from podkit.batch.pipeline.local import DeadLetter, LocalRunner, RunResult, StageStats
from podkit.batch.pipeline.model import PipelineSpec, load_pipeline, parse_pipeline
from podkit.batch.pipeline.stages import Emit

__all__ = [
    "BarrierPolicy",
    "DeadLetter",
    "Emit",
    "GroupState",
    "IllegalGroupStep",
    "LocalRunner",
    "Outcome",
    "PipelineSpec",
    "RunResult",
    "StageStats",
    "decide",
    "load_pipeline",
    "parse_pipeline",
]
