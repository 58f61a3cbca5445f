"""``podkit configsync``: turn a static config file into dynamic configuration."""

from podkit.sidecar.configsync._command import command, serve_configsync
from podkit.sidecar.configsync._core import (
    Readiness,
    Stage,
    SyncFailure,
    SyncHealth,
    load_template,
    render,
    substitute,
)
from podkit.sidecar.configsync._notify import (
    ExecNotifier,
    Notifier,
    PostNotifier,
    SignalNotifier,
    parse_signal,
)
from podkit.sidecar.configsync._sources import (
    EtcdSource,
    HTTPSource,
    Snapshot,
    Source,
    open_source,
)
from podkit.sidecar.configsync._sync import ConfigSync, ConfigSyncConfig, ConfigSyncStatistics

__all__ = [
    "ConfigSync",
    "ConfigSyncConfig",
    "ConfigSyncStatistics",
    "EtcdSource",
    "ExecNotifier",
    "HTTPSource",
    "Notifier",
    "PostNotifier",
    "Readiness",
    "SignalNotifier",
    "Snapshot",
    "Source",
    "Stage",
    "SyncFailure",
    "SyncHealth",
    "command",
    "load_template",
    "open_source",
    "parse_signal",
    "render",
    "serve_configsync",
    "substitute",
]
