"""Adapters: make what an application emits look like what the rest of the system expects."""
