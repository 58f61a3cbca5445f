"""Metrics adapter: a server's statistics (Redis, memcached, nginx, HAProxy, PostgreSQL, JSON,
statsd, a command) as a Prometheus page."""

from podkit.adapter.metrics._adapter import DEFAULT_SCRAPE_TIMEOUT, MetricsAdapter
from podkit.adapter.metrics._command import command, make_source, serve_metrics
from podkit.adapter.metrics._exposition import MetricsPage, sanitize_name
from podkit.adapter.metrics._mapping import MetricMapping, MetricsMap, map_document, parse_output
from podkit.adapter.metrics._servers import (
    haproxy_page,
    memcached_page,
    nginx_page,
    parse_memcached_stats,
    parse_redis_info,
    postgres_page,
    redis_page,
)
from podkit.adapter.metrics._sources import (
    CommandSource,
    HAProxySource,
    JSONSource,
    MemcachedSource,
    NginxSource,
    PostgresSource,
    RedisSource,
    Source,
    SourceDown,
    StatsdSource,
)
from podkit.adapter.metrics._statsd import (
    StatsdAggregator,
    StatsdMap,
    StatsdMapping,
    parse_line,
)

__all__ = [
    "DEFAULT_SCRAPE_TIMEOUT",
    "CommandSource",
    "HAProxySource",
    "JSONSource",
    "MemcachedSource",
    "MetricMapping",
    "MetricsAdapter",
    "MetricsMap",
    "MetricsPage",
    "NginxSource",
    "PostgresSource",
    "RedisSource",
    "Source",
    "SourceDown",
    "StatsdAggregator",
    "StatsdMap",
    "StatsdMapping",
    "StatsdSource",
    "command",
    "haproxy_page",
    "make_source",
    "map_document",
    "memcached_page",
    "nginx_page",
    "parse_line",
    "parse_memcached_stats",
    "parse_output",
    "parse_redis_info",
    "postgres_page",
    "redis_page",
    "sanitize_name",
    "serve_metrics",
]
