"""Event-driven and coordinated batch: stages chained by topics, joins and reduces.

Import the public API from :mod:`podkit.pipeline`.
"""
