"""What the built-in adapters read, turned into metrics (sans-IO: text in, samples out).

Metric names follow the well-known exporter of each server, so dashboards and alerts built
on it keep working: redis_exporter (``redis_*``), memcached_exporter (``memcached_*``),
nginx-prometheus-exporter (``nginx_*``), haproxy_exporter (``haproxy_*``) and
postgres_exporter (``pg_*``). Where such an exporter exposes a counter without ``_total``
(nginx, PostgreSQL), the name gains ``_total``, as Prometheus' naming rules and
``promtool check metrics`` require; a gauge whose name abbreviates a unit (redis_exporter's
``redis_instantaneous_ops_per_sec``) is left out: ``rate()`` of the counter says the same;
postgres_exporter's ``pg_stat_activity_count`` is ``pg_stat_activity_connections`` (a gauge
may not end in ``_count``).
Units are base units: seconds and bytes.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from podkit.adapter.metrics._exposition import MetricsPage, MetricType

# --- Redis ------------------------------------------------------------------------------

# INFO field -> (metric suffix, type, help, scale)
_REDIS_FIELDS: Final[dict[str, tuple[str, MetricType, str, float]]] = {
    "uptime_in_seconds": ("uptime_in_seconds", "gauge", "Seconds since the server started.", 1),
    "connected_clients": ("connected_clients", "gauge", "Client connections.", 1),
    "blocked_clients": ("blocked_clients", "gauge", "Clients blocked in a blocking call.", 1),
    "used_memory": ("memory_used_bytes", "gauge", "Memory allocated by Redis.", 1),
    "used_memory_rss": ("memory_used_rss_bytes", "gauge", "Resident set size.", 1),
    "used_memory_peak": ("memory_used_peak_bytes", "gauge", "Peak memory allocated.", 1),
    "used_memory_lua": ("memory_used_lua_bytes", "gauge", "Memory used by Lua.", 1),
    "maxmemory": ("memory_max_bytes", "gauge", "The maxmemory setting (0: no limit).", 1),
    "mem_fragmentation_ratio": (
        "mem_fragmentation_ratio",
        "gauge",
        "Resident set size over memory allocated.",
        1,
    ),
    "total_connections_received": (
        "connections_received_total",
        "counter",
        "Connections accepted.",
        1,
    ),
    "total_commands_processed": ("commands_processed_total", "counter", "Commands run.", 1),
    "total_net_input_bytes": ("net_input_bytes_total", "counter", "Bytes read.", 1),
    "total_net_output_bytes": ("net_output_bytes_total", "counter", "Bytes written.", 1),
    "rejected_connections": (
        "rejected_connections_total",
        "counter",
        "Connections refused at maxclients.",
        1,
    ),
    "expired_keys": ("expired_keys_total", "counter", "Keys removed on expiry.", 1),
    "evicted_keys": ("evicted_keys_total", "counter", "Keys evicted at maxmemory.", 1),
    "keyspace_hits": ("keyspace_hits_total", "counter", "Lookups that found the key.", 1),
    "keyspace_misses": ("keyspace_misses_total", "counter", "Lookups that missed.", 1),
    "pubsub_channels": ("pubsub_channels", "gauge", "Channels with subscribers.", 1),
    "pubsub_patterns": ("pubsub_patterns", "gauge", "Pattern subscriptions.", 1),
    "rdb_changes_since_last_save": (
        "rdb_changes_since_last_save",
        "gauge",
        "Writes since the last RDB save.",
        1,
    ),
    "rdb_last_save_time": (
        "rdb_last_save_timestamp_seconds",
        "gauge",
        "Unix time of the last RDB save.",
        1,
    ),
    "aof_enabled": ("aof_enabled", "gauge", "1 when the append-only file is on.", 1),
    "connected_slaves": ("connected_slaves", "gauge", "Connected replicas.", 1),
    "master_repl_offset": ("master_repl_offset", "gauge", "Replication offset.", 1),
    "used_cpu_sys": ("cpu_sys_seconds_total", "counter", "System CPU time.", 1),
    "used_cpu_user": ("cpu_user_seconds_total", "counter", "User CPU time.", 1),
}
_INFO_LABELS: Final = ("redis_version", "redis_mode", "os", "role", "maxmemory_policy")


def parse_redis_info(text: str) -> dict[str, str]:
    """``INFO``'s ``key:value`` lines as one dict (section headers and blanks skipped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _pairs(text: str) -> dict[str, str]:
    """``keys=1,expires=0,avg_ttl=0`` -> dict."""
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[key] = value
    return out


def redis_page(page: MetricsPage, info: Mapping[str, str], *, prefix: str = "redis") -> None:
    """Add redis_exporter's metrics from ``INFO ALL`` (already parsed)."""
    for key, (suffix, kind, help, scale) in _REDIS_FIELDS.items():
        value = _number(info.get(key, ""))
        if value is not None:
            page.add(f"{prefix}_{suffix}", value * scale, type=kind, help=help)
    labels = {key: info[key] for key in _INFO_LABELS if key in info}
    page.add(
        f"{prefix}_instance_info", 1, help="Information about the Redis instance.", labels=labels
    )
    page.add(
        f"{prefix}_master_link_up",
        1 if info.get("master_link_status") == "up" else 0,
        help="1 when this replica's link to its master is up (0 on a master).",
    )
    for key, text in info.items():
        if re.fullmatch(r"db\d+", key):
            stats = _pairs(text)
            db = {"db": key}
            page.add(
                f"{prefix}_db_keys",
                float(stats.get("keys", 0)),
                help="Keys in the database.",
                labels=db,
            )
            page.add(
                f"{prefix}_db_keys_expiring",
                float(stats.get("expires", 0)),
                help="Keys with an expiry in the database.",
                labels=db,
            )
            page.add(
                f"{prefix}_db_avg_ttl_seconds",
                float(stats.get("avg_ttl", 0)) / 1000,
                help="Average time to live of the keys with an expiry.",
                labels=db,
            )
        elif key.startswith("cmdstat_"):
            stats = _pairs(text)
            cmd = {"cmd": key.removeprefix("cmdstat_")}
            page.add(
                f"{prefix}_commands_total",
                float(stats.get("calls", 0)),
                type="counter",
                help="Calls of each command.",
                labels=cmd,
            )
            page.add(
                f"{prefix}_commands_duration_seconds_total",
                float(stats.get("usec", 0)) / 1e6,
                type="counter",
                help="Time spent in each command.",
                labels=cmd,
            )


# --- memcached --------------------------------------------------------------------------

_MEMCACHED_FIELDS: Final[dict[str, tuple[str, MetricType, str]]] = {
    "uptime": ("uptime_seconds", "gauge", "Seconds since the server started."),
    "time": ("time_seconds", "gauge", "The server's clock, as Unix time."),
    "curr_connections": ("current_connections", "gauge", "Open connections."),
    "total_connections": ("connections_total", "counter", "Connections accepted."),
    "rejected_connections": ("connections_rejected_total", "counter", "Connections refused."),
    "max_connections": ("max_connections", "gauge", "The connection limit."),
    "curr_items": ("current_items", "gauge", "Items stored."),
    "total_items": ("items_total", "counter", "Items stored since start."),
    "evictions": ("items_evicted_total", "counter", "Items evicted to make room."),
    "reclaimed": ("items_reclaimed_total", "counter", "Expired items whose room was reused."),
    "bytes": ("current_bytes", "gauge", "Bytes used by stored items."),
    "limit_maxbytes": ("limit_bytes", "gauge", "The memory limit."),
    "bytes_read": ("read_bytes_total", "counter", "Bytes read from clients."),
    "bytes_written": ("written_bytes_total", "counter", "Bytes written to clients."),
    "rusage_user": ("process_user_cpu_seconds_total", "counter", "User CPU time."),
    "rusage_system": ("process_system_cpu_seconds_total", "counter", "System CPU time."),
}
# (command, status) -> stats key, as memcached_exporter's memcached_commands_total.
_MEMCACHED_COMMANDS: Final = (
    ("get", "hit", "get_hits"),
    ("get", "miss", "get_misses"),
    ("get", "expired", "get_expired"),
    ("get", "flushed", "get_flushed"),
    ("set", "hit", "cmd_set"),
    ("flush", "hit", "cmd_flush"),
    ("touch", "hit", "touch_hits"),
    ("touch", "miss", "touch_misses"),
    ("delete", "hit", "delete_hits"),
    ("delete", "miss", "delete_misses"),
    ("incr", "hit", "incr_hits"),
    ("incr", "miss", "incr_misses"),
    ("decr", "hit", "decr_hits"),
    ("decr", "miss", "decr_misses"),
    ("cas", "hit", "cas_hits"),
    ("cas", "miss", "cas_misses"),
    ("cas", "badval", "cas_badval"),
)


def parse_memcached_stats(text: str) -> dict[str, str]:
    """``STAT name value`` lines (up to ``END``) as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2].strip()
    return out


def memcached_page(
    page: MetricsPage, stats: Mapping[str, str], *, prefix: str = "memcached"
) -> None:
    """Add memcached_exporter's metrics from ``stats``."""
    for key, (suffix, kind, help) in _MEMCACHED_FIELDS.items():
        value = _number(stats.get(key, ""))
        if value is not None:
            page.add(f"{prefix}_{suffix}", value, type=kind, help=help)
    if "version" in stats:
        page.add(
            f"{prefix}_version",
            1,
            help="The version of memcached.",
            labels={"version": stats["version"]},
        )
    for command, status, key in _MEMCACHED_COMMANDS:
        value = _number(stats.get(key, ""))
        if value is not None:
            page.add(
                f"{prefix}_commands_total",
                value,
                type="counter",
                help="Commands served, by command and outcome.",
                labels={"command": command, "status": status},
            )


# --- nginx stub_status ------------------------------------------------------------------

_STUB_STATUS = re.compile(
    r"Active connections:\s*(\d+)\s*\n\s*server accepts handled requests\s*\n"
    r"\s*(\d+)\s+(\d+)\s+(\d+)\s*\n\s*Reading:\s*(\d+)\s+Writing:\s*(\d+)\s+Waiting:\s*(\d+)"
)


def nginx_page(page: MetricsPage, text: str, *, prefix: str = "nginx") -> None:
    """Add nginx-prometheus-exporter's metrics from a ``stub_status`` page.

    Raises:
        ValueError: the text is not a stub_status page.
    """
    match = _STUB_STATUS.search(text)
    if match is None:
        raise ValueError("not an nginx stub_status page")
    active, accepted, handled, requests, reading, writing, waiting = map(float, match.groups())
    page.add(f"{prefix}_connections_active", active, help="Active client connections.")
    page.add(f"{prefix}_connections_reading", reading, help="Connections reading a request.")
    page.add(f"{prefix}_connections_writing", writing, help="Connections writing a response.")
    page.add(f"{prefix}_connections_waiting", waiting, help="Idle keep-alive connections.")
    page.add(
        f"{prefix}_connections_accepted_total",
        accepted,
        type="counter",
        help="Connections accepted.",
    )
    page.add(
        f"{prefix}_connections_handled_total", handled, type="counter", help="Connections handled."
    )
    page.add(f"{prefix}_http_requests_total", requests, type="counter", help="Requests served.")


# --- HAProxy CSV stats ------------------------------------------------------------------

_HAPROXY_TYPES: Final = {"0": "frontend", "1": "backend", "2": "server"}
# CSV column -> (metric suffix, type, help, which proxy types have it, scale)
_HAPROXY_FIELDS: Final[list[tuple[str, str, MetricType, str, str, float]]] = [
    ("qcur", "current_queue", "gauge", "Requests waiting in the queue.", "bs", 1),
    ("qmax", "max_queue", "gauge", "Most requests ever queued.", "bs", 1),
    ("scur", "current_sessions", "gauge", "Open sessions.", "fbs", 1),
    ("smax", "max_sessions", "gauge", "Most sessions ever open at once.", "fbs", 1),
    ("slim", "limit_sessions", "gauge", "The session limit.", "fbs", 1),
    ("stot", "sessions_total", "counter", "Sessions opened.", "fbs", 1),
    ("bin", "bytes_in_total", "counter", "Bytes received.", "fbs", 1),
    ("bout", "bytes_out_total", "counter", "Bytes sent.", "fbs", 1),
    ("dreq", "requests_denied_total", "counter", "Requests denied by rules.", "fb", 1),
    ("dresp", "responses_denied_total", "counter", "Responses denied by rules.", "fbs", 1),
    ("ereq", "request_errors_total", "counter", "Request errors.", "f", 1),
    ("econ", "connection_errors_total", "counter", "Failed connections to servers.", "bs", 1),
    ("eresp", "response_errors_total", "counter", "Response errors.", "bs", 1),
    ("wretr", "retry_warnings_total", "counter", "Connection retries.", "bs", 1),
    ("wredis", "redispatch_warnings_total", "counter", "Requests redispatched.", "bs", 1),
    ("weight", "weight", "gauge", "Load-balancing weight.", "bs", 1),
    ("act", "active_servers", "gauge", "Active servers.", "b", 1),
    ("bck", "backup_servers", "gauge", "Backup servers.", "b", 1),
    ("chkfail", "check_failures_total", "counter", "Failed health checks.", "s", 1),
    ("downtime", "downtime_seconds_total", "counter", "Time spent down.", "bs", 1),
    ("lbtot", "server_selected_total", "counter", "Times a server was picked.", "bs", 1),
    ("rate", "current_session_rate", "gauge", "Sessions per second, last second.", "fbs", 1),
    ("req_tot", "http_requests_total", "counter", "HTTP requests.", "fb", 1),
    ("check_duration", "check_duration_seconds", "gauge", "Last health check time.", "s", 0.001),
]


def haproxy_page(page: MetricsPage, text: str, *, prefix: str = "haproxy") -> None:
    """Add haproxy_exporter's metrics from HAProxy's CSV statistics (``/stats;csv``).

    Raises:
        ValueError: the text is not HAProxy's CSV.
    """
    if not text.startswith("# pxname,svname,"):
        raise ValueError("not HAProxy CSV statistics (expected '# pxname,svname,...')")
    rows = csv.DictReader(io.StringIO(text[2:]))
    for row in rows:
        kind = _HAPROXY_TYPES.get(row.get("type") or "")
        if kind is None:
            continue
        if kind == "server":
            labels = {"backend": row["pxname"], "server": row["svname"]}
        else:
            labels = {kind: row["pxname"]}
        letter = kind[0]
        for column, suffix, metric_type, help, kinds, scale in _HAPROXY_FIELDS:
            if letter not in kinds:
                continue
            value = _number(row.get(column) or "")
            if value is not None:
                page.add(
                    f"{prefix}_{kind}_{suffix}",
                    value * scale,
                    type=metric_type,
                    help=help,
                    labels=labels,
                )
        if kind != "frontend":
            status = (row.get("status") or "").split()[0] if row.get("status") else ""
            page.add(
                f"{prefix}_{kind}_up",
                1 if status in ("UP", "OPEN", "no") else 0,
                help="1 when HAProxy counts it up (a server without checks counts up).",
                labels=labels,
            )
        for code in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"):
            value = _number(row.get(f"hrsp_{code}") or "")
            if value is not None:
                page.add(
                    f"{prefix}_{kind}_http_responses_total",
                    value,
                    type="counter",
                    help="HTTP responses by status class.",
                    labels={**labels, "code": code},
                )


# --- PostgreSQL ---------------------------------------------------------------------------

PG_STAT_DATABASE_QUERY: Final = (
    "SELECT datid::text AS datid, datname, numbackends, xact_commit, xact_rollback, "
    "blks_read, blks_hit, tup_returned, tup_fetched, tup_inserted, tup_updated, tup_deleted, "
    "conflicts, temp_files, temp_bytes, deadlocks, blk_read_time, blk_write_time, "
    "pg_database_size(datname) AS size_bytes "
    "FROM pg_stat_database WHERE datname IS NOT NULL"
)
PG_ACTIVITY_QUERY: Final = (
    "SELECT coalesce(datname, '') AS datname, coalesce(state, 'unknown') AS state, "
    "count(*) AS count FROM pg_stat_activity WHERE backend_type = 'client backend' "
    "GROUP BY 1, 2"
)
PG_SETTINGS_QUERY: Final = (
    "SELECT current_setting('max_connections')::float AS max_connections, "
    "extract(epoch FROM pg_postmaster_start_time())::float AS start_time, "
    "pg_is_in_recovery() AS in_recovery, current_setting('server_version') AS version"
)
# pg_stat_database column -> (metric suffix, type, help, scale)
_PG_DATABASE: Final[dict[str, tuple[str, MetricType, str, float]]] = {
    "numbackends": ("numbackends", "gauge", "Backends connected to the database.", 1),
    "xact_commit": ("xact_commit_total", "counter", "Transactions committed.", 1),
    "xact_rollback": ("xact_rollback_total", "counter", "Transactions rolled back.", 1),
    "blks_read": ("blks_read_total", "counter", "Disk blocks read.", 1),
    "blks_hit": ("blks_hit_total", "counter", "Blocks found in the buffer cache.", 1),
    "tup_returned": ("tup_returned_total", "counter", "Rows returned by queries.", 1),
    "tup_fetched": ("tup_fetched_total", "counter", "Rows fetched by queries.", 1),
    "tup_inserted": ("tup_inserted_total", "counter", "Rows inserted.", 1),
    "tup_updated": ("tup_updated_total", "counter", "Rows updated.", 1),
    "tup_deleted": ("tup_deleted_total", "counter", "Rows deleted.", 1),
    "conflicts": ("conflicts_total", "counter", "Queries cancelled by recovery conflicts.", 1),
    "temp_files": ("temp_files_total", "counter", "Temporary files created.", 1),
    "temp_bytes": ("temp_bytes_total", "counter", "Bytes written to temporary files.", 1),
    "deadlocks": ("deadlocks_total", "counter", "Deadlocks detected.", 1),
    "blk_read_time": ("blk_read_time_seconds_total", "counter", "Time reading blocks.", 1e-3),
    "blk_write_time": ("blk_write_time_seconds_total", "counter", "Time writing blocks.", 1e-3),
}


def postgres_page(
    page: MetricsPage,
    databases: Iterable[Mapping[str, Any]],
    activity: Iterable[Mapping[str, Any]],
    settings: Mapping[str, Any],
    *,
    prefix: str = "pg",
) -> None:
    """Add postgres_exporter's metrics from pg_stat_database, pg_stat_activity and settings."""
    for row in databases:
        labels = {"datid": str(row["datid"]), "datname": str(row["datname"])}
        for column, (suffix, kind, help, scale) in _PG_DATABASE.items():
            value = row.get(column)
            if value is not None:
                page.add(
                    f"{prefix}_stat_database_{suffix}",
                    float(value) * scale,
                    type=kind,
                    help=help,
                    labels=labels,
                )
        if row.get("size_bytes") is not None:
            page.add(
                f"{prefix}_database_size_bytes",
                float(row["size_bytes"]),
                help="Disk space used by the database.",
                labels={"datname": str(row["datname"])},
            )
    for row in activity:
        page.add(
            f"{prefix}_stat_activity_connections",
            float(row["count"]),
            help="Client connections by database and state.",
            labels={"datname": str(row["datname"]), "state": str(row["state"])},
        )
    page.add(
        f"{prefix}_settings_max_connections",
        float(settings["max_connections"]),
        help="The max_connections setting.",
    )
    page.add(
        f"{prefix}_postmaster_start_time_seconds",
        float(settings["start_time"]),
        help="Unix time the server started.",
    )
    page.add(
        f"{prefix}_in_recovery",
        1 if settings["in_recovery"] else 0,
        help="1 on a standby (in recovery), 0 on a primary.",
    )
    page.add(
        f"{prefix}_static",
        1,
        help="The server's version.",
        labels={"short_version": str(settings["version"]).split()[0]},
    )
