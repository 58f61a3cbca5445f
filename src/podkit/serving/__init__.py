"""Serving patterns: load-balanced replicas, caching, election, scatter/gather."""
