"""Serving patterns: replicated services behind a load balancer, caching, scatter/gather."""
