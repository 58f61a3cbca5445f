"""Ambassadors: components that stand between an application and the services it calls.

* :mod:`podkit.ambassador.shard`: a sharding router for memcached and Redis (``podkit shard``).
* :mod:`podkit.ambassador.split`: request splitting, sticky canaries, shadow traffic with
  response diffs and progressive delivery (``podkit split``).
* :mod:`podkit.ambassador.broker`: one local address, the current environment's upstreams
  (``podkit broker``).
"""
