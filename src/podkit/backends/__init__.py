"""Coordination backends (sqlite, redis, etcd) behind one small interface per need."""
