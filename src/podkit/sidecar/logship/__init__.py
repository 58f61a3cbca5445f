"""``podkit logship``: tail log files through rotation and ship structured records to a sink."""

from podkit.sidecar._retry import Backoff
from podkit.sidecar.logship._batch import Batch, Batcher
from podkit.sidecar.logship._command import command, serve_logship
from podkit.sidecar.logship._shipper import (
    LogshipConfig,
    LogShipper,
    LogshipStatistics,
    read_checkpoint,
    write_checkpoint,
)
from podkit.sidecar.logship._sinks import (
    FileSink,
    HTTPSink,
    RedisStreamSink,
    Sink,
    SinkError,
    SinkRejected,
    SinkUnavailable,
    open_sink,
)
from podkit.sidecar.logship._tail import (
    CheckpointEntry,
    FileStat,
    LineSplitter,
    TailTracker,
    fingerprint_of,
)

__all__ = [
    "Backoff",
    "Batch",
    "Batcher",
    "CheckpointEntry",
    "FileSink",
    "FileStat",
    "HTTPSink",
    "LineSplitter",
    "LogShipper",
    "LogshipConfig",
    "LogshipStatistics",
    "RedisStreamSink",
    "Sink",
    "SinkError",
    "SinkRejected",
    "SinkUnavailable",
    "TailTracker",
    "command",
    "fingerprint_of",
    "open_sink",
    "read_checkpoint",
    "serve_logship",
    "write_checkpoint",
]
