"""Which process holds the server end of a loopback TCP connection (Linux ``/proc``).

With SO_REUSEPORT the kernel picks the worker that accepts a connection; a test that must see
every worker answer asks the kernel afterwards: the server end's socket inode is listed in
``/proc/net/tcp`` (IPv4) and appears as ``socket:[inode]`` among the owner's descriptors.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path

_ESTABLISHED = "01"


def _server_end_inode(client: socket.socket) -> int | None:
    client_port = client.getsockname()[1]
    server_port = client.getpeername()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if (
            state == _ESTABLISHED
            and int(local.rsplit(":", 1)[1], 16) == server_port
            and int(remote.rsplit(":", 1)[1], 16) == client_port
        ):
            return int(inode)
    return None


def server_pid(client: socket.socket, candidates: Iterable[int]) -> int | None:
    """The pid among ``candidates`` that holds the accepted end of ``client``'s connection."""
    inode = _server_end_inode(client)
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid in candidates:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in descriptors:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return pid
            except OSError:
                continue
    return None
