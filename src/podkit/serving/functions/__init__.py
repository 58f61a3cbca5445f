"""The functions pattern: small functions run in response to HTTP requests, events, queue
items and timers. Import the public API from :mod:`podkit.functions`."""
