"""Small programs used by examples, tests and benchmarks (the "legacy app" of the patterns)."""

from podkit.apps.whoami import WhoamiApp

__all__ = ["WhoamiApp"]
