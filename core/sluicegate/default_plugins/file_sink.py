"""The built-in ``file`` sink: JSON lines on local disk, one file per team when ``path`` has ``{team_id}``."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from sluicegate.hookspecs import hookimpl
from sluicegate.sinks.base import CallbackVars, HealthResult, Sink

if TYPE_CHECKING:
    from sluicegate.events import LogEvent

__all__ = ("FileSink",)

_encoder = msgspec.json.Encoder()


class FileVars(CallbackVars, frozen=True):
    path: str
    """File to append to; ``{team_id}`` is replaced by the event's team id (``no-team`` when it has none)."""


def _safe(part: str | None) -> str:
    text = part or "no-team"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).lstrip(".") or "no-team"


class FileSink(Sink):
    callback_name = "file"
    Vars = FileVars
    max_batch_size = 500
    callback_vars: FileVars

    def _target(self, event: LogEvent) -> str:
        return self.callback_vars.path.replace("{team_id}", _safe(event.metadata.user_api_key_team_id))

    async def send(self, batch: Sequence[LogEvent]) -> None:
        if not batch:
            return
        by_file: dict[str, list[bytes]] = defaultdict(list)
        for event in batch:
            by_file[self._target(event)].append(_encoder.encode(event) + b"\n")
        await asyncio.to_thread(_append_all, by_file)

    async def health_check(self) -> HealthResult:
        directory = os.path.dirname(os.path.abspath(self.callback_vars.path.replace("{team_id}", "x"))) or "."
        if os.path.isdir(directory) and os.access(directory, os.W_OK):
            return HealthResult(healthy=True, details=f"file: directory {directory} is writable")
        if not os.path.exists(directory):
            parent = os.path.dirname(directory)
            if os.path.isdir(parent) and os.access(parent, os.W_OK):
                return HealthResult(healthy=True, details=f"file: {directory} will be created")
        return HealthResult(healthy=False, details=f"file: directory {directory} is not writable",
                            error_kind="permission")


def _append_all(by_file: dict[str, list[bytes]]) -> None:
    for path, lines in by_file.items():
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "ab") as handle:
            handle.write(b"".join(lines))


@hookimpl
def register_sinks(register) -> None:
    register(FileSink)
