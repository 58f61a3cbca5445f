"""Ambassadors: components that stand between an application and the services it calls.

* :mod:`podkit.ambassador.shard`: a sharding router for memcached and Redis (``podkit shard``).
"""
