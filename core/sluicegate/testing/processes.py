"""A process tree read from ``/proc`` (Linux), for tests that start ``sluicegate serve`` and look at its supervisor,
workers and delivery process."""

from __future__ import annotations

from pathlib import Path

__all__ = ("cmdline", "descendants")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first, then theirs); gone ones are left out."""
    found = []
    for child in _children(pid):
        found += [child, *descendants(child)]
    return found


def cmdline(pid: int) -> str:
    """``pid``'s command line, arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
