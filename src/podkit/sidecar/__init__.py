"""Sidecars: components that sit beside an application that knows nothing of them.

``podkit tls`` adds HTTPS, ``podkit configsync`` turns a static config file into dynamic
configuration, ``podkit logship`` ships the application's logs.
"""
