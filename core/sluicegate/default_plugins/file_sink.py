"""The built-in ``file`` sink: JSON lines on local disk, one file per team when ``path`` has ``{team_id}``.

Request attribution: each line is one whole event as JSON, the request's attribution included (``request_tags``, ``end_user``, and
under ``metadata`` ``session_id``, ``trace_name``, ``generation_name``, ``trace_metadata``, ``requester_metadata``
and the key's and team's metadata).

Files are created 0600 and directories 0700. A path written through the admin API resolves under
``sluicegate_settings.file_sink_root`` and never through a symlink below it; a path from config.yaml is used as
written (relative to the working directory).
"""

from __future__ import annotations

import asyncio
import os
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import msgspec

from sluicegate.hookspecs import hookimpl
from sluicegate.sinks.base import CallbackVars, HealthResult, Sink

if TYPE_CHECKING:
    from sluicegate.events import LogEvent
    from sluicegate.sinks.destinations import DestinationPolicy

__all__ = ("FileSink", "decode_team_id", "encode_team_id")

_encoder = msgspec.json.Encoder()
_KEPT = frozenset(string.ascii_letters + string.digits + "_-")
NO_TEAM = "no-team"


class FileVars(CallbackVars, frozen=True):
    path: str
    """File to append to; ``{team_id}`` is replaced by the event's team id, percent-encoded (every character but
    ``A-Z a-z 0-9 _ -``: ``acme:eu`` → ``acme%3Aeu``), or ``no-team`` when it has none (a team named ``no-team``
    is written ``no%2Dteam``). Written through the admin API: relative to ``sluicegate_settings.file_sink_root``,
    and must stay inside it."""


def encode_team_id(team_id: str | None) -> str:
    """The file-name form of ``team_id``: reversible (:func:`decode_team_id`), so two teams never share a file,
    and never ``.``, ``..``, a hidden name or a path separator."""
    if not team_id:
        return NO_TEAM
    if team_id == NO_TEAM:
        return "no%2Dteam"
    return "".join(c if c in _KEPT else "".join(f"%{b:02X}" for b in c.encode()) for c in team_id)


def decode_team_id(text: str) -> str | None:
    """The team id :func:`encode_team_id` turned into ``text`` (``None`` for events without a team)."""
    return None if text == NO_TEAM else unquote(text, errors="strict")


class FileSink(Sink):
    callback_name = "file"
    Vars = FileVars
    max_batch_size = 500
    callback_vars: FileVars

    @classmethod
    def destination_problems(cls, callback_vars: CallbackVars, policy: DestinationPolicy) -> list[tuple[str, str]]:
        assert isinstance(callback_vars, FileVars)
        problem = policy.file_problem(callback_vars.path)
        return [] if problem is None else [("path", problem)]

    def _target(self, event: LogEvent) -> str:
        return self.callback_vars.path.replace("{team_id}", encode_team_id(event.metadata.user_api_key_team_id))

    async def send(self, batch: Sequence[LogEvent]) -> None:
        if not batch:
            return
        by_file: dict[str, list[bytes]] = defaultdict(list)
        for event in batch:
            by_file[self._target(event)].append(_encoder.encode(event) + b"\n")
        await asyncio.to_thread(_append_all, self.destination_policy, by_file)

    async def health_check(self) -> HealthResult:
        policy = self.destination_policy
        example = self.callback_vars.path.replace("{team_id}", "x")
        problem = policy.file_problem(self.callback_vars.path)
        if problem is not None:
            return HealthResult(healthy=False, details=f"file: {problem}", error_kind="refused")
        if policy.trusted:
            target = os.path.abspath(example)
        else:
            target = os.path.join(policy.file_root, *policy.relative_parts(example))
        directory = os.path.dirname(target)
        while not os.path.exists(directory) and os.path.dirname(directory) != directory:
            directory = os.path.dirname(directory)  # the nearest existing ancestor: the rest will be created
        if os.path.isdir(directory) and os.access(directory, os.W_OK):
            shown = os.path.dirname(target)
            what = "is writable" if directory == shown else f"will be created (in {directory})"
            return HealthResult(healthy=True, details=f"file: directory {shown} {what}")
        return HealthResult(healthy=False, details=f"file: directory {directory} is not writable",
                            error_kind="permission")


def _append_all(policy: DestinationPolicy, by_file: dict[str, list[bytes]]) -> None:
    for path, lines in by_file.items():
        fd = policy.open_append(path)
        try:
            data = memoryview(b"".join(lines))
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)


def _problems(callback_vars: Mapping[str, Any]) -> list[str]:
    path = callback_vars.get("path")
    if isinstance(path, str) and not path.strip():
        return ["path: must not be empty"]
    return []


@hookimpl
def validate_callback_vars(callback_name: str, callback_vars: Mapping[str, Any]) -> list[str] | None:
    return _problems(callback_vars) if callback_name == FileSink.callback_name else None


@hookimpl
def register_sinks(register) -> None:
    register(FileSink)

