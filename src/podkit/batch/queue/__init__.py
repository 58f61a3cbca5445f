"""The work queue pattern: sans-IO item state machine, queue client, workers and CLI.

Import the public API from :mod:`podkit.queue`.
"""
