"""Pickling support for frozen dataclasses that may be compiled to C.

A frozen dataclass compiled by mypyc cannot be unpickled the default way (its generated
``__setattr__`` refuses the assignments ``pickle`` makes), and these values cross process
boundaries (``--workers`` passes its settings to each worker). Such a class defines
``__reduce__`` as ``return reduce_dataclass(self)``: it is rebuilt through its constructor.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def rebuild_dataclass(cls: type[Any], values: dict[str, Any]) -> Any:
    """Call ``cls(**values)`` (what :func:`reduce_dataclass` hands to ``pickle``)."""
    return cls(**values)


def reduce_dataclass(instance: Any) -> tuple[Any, ...]:
    """``__reduce__`` for a dataclass: its constructor and its init fields' values."""
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance) if f.init}
    return (rebuild_dataclass, (type(instance), values))
