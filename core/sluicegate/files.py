"""Two file patterns the spool, the worker logs, the delivery process and the worker metrics share: a slot a live
process holds with ``flock`` (free again when its process dies), and a file replaced whole."""

from __future__ import annotations

import fcntl
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ("claim_slot", "replace_file")


def claim_slot(lock_of: Callable[[int], Path], limit: int = 4096) -> tuple[int, int] | None:
    """Lock the first free slot: ``(its number, the held lock's descriptor)``, or None when all ``limit`` are held.
    ``lock_of(n)`` is slot ``n``'s lock file; its directory is made (``0700``) when missing. A slot whose process
    died is free again: the kernel drops a ``flock`` with its process."""
    for number in range(limit):
        path = lock_of(number)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return number, fd
    return None


def replace_file(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` (``0600``) through a temporary file and a rename: a reader sees the old content
    or the new, whole. ``fsync``: on disk before the rename. One writer per ``path`` (its temporary file has a
    fixed name, so a write a kill cut short leaves one file behind, replaced by the next)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:  # a short write (a signal, a full pipe of a FUSE file system) goes on where it stopped
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
