"""Batch patterns: work queues and pipelines."""
