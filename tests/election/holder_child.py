"""A process that leads an election and reports each step as a JSON line on stdout.

Run as ``python holder_child.py URL NAME IDENTITY TTL``. Lines: ``{"event": "leading",
"token": N, "at": T, "valid_until": T}``, ``{"event": "renewed", "valid_until": T, ...}``,
``{"event": "lost", "reason": R, "at": T}``; times are ``time.monotonic()``, which all
processes share. ``valid_until`` is ``at`` plus the event's ``lease_left``: taken after the
election computed it, it is never earlier than the elector's own deadline.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from podkit.election import Election


def report(event: str, fields: dict[str, Any]) -> None:
    at = time.monotonic()
    if "lease_left" in fields:
        fields = {**fields, "valid_until": at + fields["lease_left"]}
    print(json.dumps({"event": event, **fields, "at": at}), flush=True)


async def main(url: str, name: str, identity: str, ttl: float) -> None:
    election = Election(url, name, identity=identity, ttl=ttl, on_event=report)
    async with election, election.leadership() as term:
        await term.wait_lost()
        report("believes_lost", {"token": term.fencing_token})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
