"""Sink instances, one per distinct (callback_name, resolved vars), created on first use and evicted when idle."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sluicegate.sinks.base import CallbackVars, Sink
from sluicegate.sinks.destinations import TRUSTED, DestinationPolicy
from sluicegate.sinks.scrub import Scrubber

if TYPE_CHECKING:
    import asyncio

    from sluicegate.redaction.policy import CompiledPolicy

    from sluicegate.sinks.spool import InstanceLog

__all__ = ("SinkPool", "SinkSlot")

class SinkSlot:
    """One sink instance with its queue, send task (while sending), deadline (while lingering) and counters."""

    __slots__ = ("instance_id", "callback_name", "sink", "queue", "task", "last_used", "queued", "sent", "retried",
                 "dropped", "failed_sends", "last_error", "last_error_at", "closed", "due", "inflight",
                 "log", "spool_dropped", "redaction")

    def __init__(self, instance_id: str, sink: Sink) -> None:
        self.instance_id = instance_id
        self.callback_name = sink.callback_name
        self.sink = sink
        # (spool seq or 0, the event's JSON), oldest first. A list, not a deque: a deque costs ~600 bytes even for
        # the one or two events most of 20,000 instances hold while lingering; batches leave from the front in one
        # slice.
        self.queue: list[tuple[int, bytes]] = []
        self.log: InstanceLog | None = None
        self.spool_dropped = 0
        self.task: asyncio.Task[None] | None = None
        self.due = 0.0  # loop time its lingering batch is due; 0 when not lingering
        self.last_used = time.monotonic()
        self.queued = 0
        self.sent = 0
        self.retried = 0
        self.dropped = 0
        self.failed_sends = 0
        self.inflight = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.closed = False
        self.redaction: CompiledPolicy | None = None
        """The redaction policy applied to this instance's events when their batch goes out (part of its id)."""

    def scrubber(self) -> Scrubber:
        """A :class:`Scrubber` for this instance's secrets, as the sink sends them now (built here, not kept: errors
        are rare, and a secret may change, e.g. a refreshed access token)."""
        return Scrubber.for_sink(self.sink)

    def scrub(self, text: str, limit: int = 500) -> str:
        """``text`` fit to leave the instance (``last_error``, a log line, health details for an admin): every form
        of every secret masked, on one line, at most ``limit`` characters."""
        return self.scrubber().line(text, limit)

    @property
    def spilled(self) -> int:
        """Events of this instance held only by the spool (not in memory)."""
        return self.log.spilled if self.log is not None else 0

    @property
    def busy(self) -> bool:
        return (bool(self.queue) or self.inflight > 0 or self.spilled > 0 or self.due > 0
                or (self.task is not None and not self.task.done()))


class SinkPool:
    """Holds :class:`SinkSlot` objects by instance id; bounded by ``max_instances`` (idle ones evicted first)."""

    __slots__ = ("slots", "max_instances", "idle_seconds", "sink_classes", "api_policy")

    def __init__(self, *, max_instances: int, idle_seconds: float) -> None:
        self.slots: dict[str, SinkSlot] = {}
        self.max_instances = max_instances
        self.idle_seconds = idle_seconds
        self.sink_classes: set[type[Sink]] = set()
        self.api_policy = DestinationPolicy()
        """The destination policy of instances for API-written callbacks (the gateway sets it from settings)."""

    def get(self, instance_id: str, sink_class: type[Sink], callback_vars: CallbackVars, *,
            trusted: bool = True) -> SinkSlot:
        """The slot of ``instance_id``, creating its sink (held to :attr:`api_policy` unless ``trusted``)."""
        slot = self.slots.get(instance_id)
        if slot is None or slot.closed:
            sink = sink_class(callback_vars)
            sink.destination_policy = TRUSTED if trusted else self.api_policy
            slot = SinkSlot(instance_id, sink)
            self.slots[instance_id] = slot
            self.sink_classes.add(sink_class)
        return slot

    def over_capacity(self) -> int:
        return max(0, len(self.slots) - self.max_instances)

    def evictable(self, now: float, *, force: int = 0) -> list[SinkSlot]:
        """Idle slots to close: those unused for ``idle_seconds``, plus the ``force`` least recently used."""
        idle = [s for s in self.slots.values() if not s.busy]
        chosen = {s.instance_id: s for s in idle if now - s.last_used >= self.idle_seconds}
        if force:
            for slot in sorted(idle, key=lambda s: s.last_used):
                if len(chosen) >= force:
                    break
                chosen.setdefault(slot.instance_id, slot)
        return list(chosen.values())

    def remove(self, slot: SinkSlot) -> None:
        if self.slots.get(slot.instance_id) is slot:
            del self.slots[slot.instance_id]
        slot.closed = True
