"""``podkit cache``: an RFC 9111 shared caching proxy with request coalescing.

The decisions (storability, freshness, age, variants, validation, invalidation, LRU by bytes,
coalescing) are sans-IO and re-exported here; the asyncio shell that runs them on the HTTP
engine lives in ``podkit.serving.cache.app``.
"""

from podkit.serving.cache._coalesce import (
    DEFAULT_COALESCE_TIMEOUT,
    CoalescingStatistics,
    CoalescingTable,
    Flight,
)
from podkit.serving.cache._policy import (
    CachePolicy,
    Lookup,
    LookupKind,
    cache_key,
    strip_headers,
)
from podkit.serving.cache._rules import (
    EntityTag,
    Storability,
    age_value,
    current_age,
    format_http_date,
    freshness_lifetime,
    parse_cache_control,
    parse_entity_tag,
    parse_entity_tags,
    parse_http_date,
    parse_targeted_cache_control,
    response_directives,
    storable,
    strong_match,
    vary_names,
    weak_match,
)
from podkit.serving.cache._store import (
    DEFAULT_MAX_OBJECT,
    DEFAULT_MAX_SIZE,
    ObjectStore,
    StoredResponse,
    StoreStatistics,
    secondary_key,
)

__all__ = [
    "DEFAULT_COALESCE_TIMEOUT",
    "DEFAULT_MAX_OBJECT",
    "DEFAULT_MAX_SIZE",
    "CachePolicy",
    "CoalescingStatistics",
    "CoalescingTable",
    "EntityTag",
    "Flight",
    "Lookup",
    "LookupKind",
    "ObjectStore",
    "Storability",
    "StoreStatistics",
    "StoredResponse",
    "age_value",
    "cache_key",
    "current_age",
    "format_http_date",
    "freshness_lifetime",
    "parse_cache_control",
    "parse_entity_tag",
    "parse_entity_tags",
    "parse_http_date",
    "parse_targeted_cache_control",
    "response_directives",
    "secondary_key",
    "storable",
    "strip_headers",
    "strong_match",
    "vary_names",
    "weak_match",
]
