"""Serving patterns: replicated, sharded and elected services."""
