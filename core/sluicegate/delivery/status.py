"""The delivery process's status socket: how serving workers learn its health and its sinks' counters.

A UNIX socket next to the worker logs (``<spool_dir>/delivery.sock``, in the spool's ``0700`` directory; an abstract
socket named after that path when the path is too long for ``sun_path``). One request per connection: a line
(``ping`` or ``stats``), answered with one JSON document, then closed. ``ping`` is what ``/health/readiness`` asks
(a connect and a few hundred bytes); ``stats`` is ``/-/sinks`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import msgspec

__all__ = ("PROGRESS_FILE", "LOCK_FILE", "query", "status_address")

LOCK_FILE = "delivery.lock"
PROGRESS_FILE = "delivery.progress"
_SOCKET = "delivery.sock"
_SUN_PATH_MAX = 107


def status_address(spool_dir: str | os.PathLike[str]) -> str:
    """The status socket's address for the spool directory ``spool_dir``."""
    path = str(Path(spool_dir).resolve() / _SOCKET)
    if len(path.encode()) <= _SUN_PATH_MAX:
        return path
    return "\0sluicegate-delivery-" + hashlib.sha256(path.encode()).hexdigest()[:32]


async def query(address: str, command: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """Ask the delivery process; None when it does not answer within ``timeout`` (down, restarting, hung)."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            # Connected here, then handed over: uvloop's open_unix_connection refuses abstract addresses.
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, address)
            except BaseException:
                sock.close()
                raise
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            writer.write(command.encode() + b"\n")
            await writer.drain()
            data = await reader.read()
        answer = msgspec.json.decode(data)
        return answer if isinstance(answer, dict) else None
    except (OSError, TimeoutError, msgspec.DecodeError):
        return None
    finally:
        if writer is not None:
            writer.close()
