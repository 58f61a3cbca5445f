"""Coordination backends (sqlite, redis, ...) behind one small interface per need."""
