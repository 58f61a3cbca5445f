"""Coordination backends (sqlite, redis, etcd) behind one small interface per need."""
"""Coordination backends (sqlite, redis, ...) behind one small interface per need."""
