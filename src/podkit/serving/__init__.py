"""Serving patterns: replicated, sharded and elected services."""
"""Serving patterns: replicated services behind a load balancer, caching, scatter/gather."""
