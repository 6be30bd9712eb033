"""Delivery: ``submit()`` queues an event for each of its routes and returns at once.

Per sink instance: a bounded queue, one worker task while there is work (batches up to ``max_batch_size``,
lingering ``batch_interval`` for more), ``send`` under the sink's timeout, retries with exponential backoff and
jitter. Instances fail alone. ``aclose()`` drains every queue within a grace period, then closes every sink.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from sluicegate.sinks.pool import SinkPool, SinkSlot
from sluicegate.sinks.redaction import redact

if TYPE_CHECKING:
    from sluicegate.config import DeliverySettings
    from sluicegate.events import LogEvent
    from sluicegate.routing import CallbackSet, Route

__all__ = ("Dispatcher",)

log = logging.getLogger("sluicegate.delivery")


def _retryable(exc: BaseException | None) -> bool:
    """Whether a failed send is worth retrying.

    A sink marks permanent failures with ``exc.retryable = False``; without the mark, an exception carrying an
    HTTP ``status_code`` of 4xx other than 408 and 429 (bad credentials, rejected payload) is permanent too.
    """
    flag = getattr(exc, "retryable", None)
    if flag is not None:
        return bool(flag)
    status = getattr(exc, "status_code", None)
    if status is None:  # httpx.HTTPStatusError and the like keep it on the response
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return False
    return True


class Dispatcher:
    def __init__(self, settings: DeliverySettings) -> None:
        self.settings = settings
        self.pool = SinkPool(max_instances=settings.max_instances, idle_seconds=settings.idle_seconds)
        self._send_slots = asyncio.Semaphore(settings.max_concurrent_sends)
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None
        self._drop_logged_at = 0.0
        self.submitted = 0

    # request path --------------------------------------------------------------------------------------
    def submit(self, event: LogEvent, callbacks: CallbackSet | None) -> int:
        """Queue ``event`` for every route of ``callbacks`` matching its status. Never awaits; returns the count."""
        if callbacks is None or not callbacks.routes:
            return 0
        success = event.status == "success"
        redacted: LogEvent | None = None
        count = 0
        for route in callbacks.routes:
            if not (route.on_success if success else route.on_failure):
                continue
            if route.redact:
                if redacted is None:
                    redacted = redact(event)
                self._enqueue(route, redacted)
            else:
                self._enqueue(route, event)
            count += 1
        self.submitted += count
        return count

    def slot_for(self, route: Route) -> SinkSlot:
        return self.pool.get(route.instance_id, route.sink_class, route.callback_vars)

    def _enqueue(self, route: Route, event: LogEvent) -> None:
        slot = self.slot_for(route)
        slot.last_used = time.monotonic()
        slot.queue.append(event)
        slot.queued += 1
        if len(slot.queue) > self.settings.queue_size:
            slot.queue.popleft()
            slot.dropped += 1
            self._log_drop(slot)
        if slot.task is None or slot.task.done():
            slot.wake = asyncio.Event()
            slot.task = asyncio.get_running_loop().create_task(self._work(slot))
        elif slot.wake is not None and len(slot.queue) >= slot.sink.max_batch_size:
            slot.wake.set()

    # background ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _work(self, slot: SinkSlot) -> None:
        max_batch = max(1, slot.sink.max_batch_size)
        while slot.queue:
            if len(slot.queue) < max_batch and not self._closing and self.settings.batch_interval > 0:
                assert slot.wake is not None
                slot.wake.clear()
                try:
                    await asyncio.wait_for(slot.wake.wait(), self.settings.batch_interval)
                except TimeoutError:
                    pass
            batch = [slot.queue.popleft() for _ in range(min(max_batch, len(slot.queue)))]
            slot.inflight = len(batch)
            try:
                await self._deliver(slot, batch)
            finally:
                slot.inflight = 0

    async def _deliver(self, slot: SinkSlot, batch: list[LogEvent]) -> None:
        attempt = 0
        while True:
            async with self._send_slots:
                try:
                    await asyncio.wait_for(slot.sink.send(batch), slot.sink.send_timeout)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a sink raises on any failure, by contract
                    slot.failed_sends += 1
                    kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                    slot.last_error = slot.scrub(f"{kind}: {exc}")[:500]
                    slot.last_error_at = time.time()
                    slot.last_exception = exc
                else:
                    slot.sent += len(batch)
                    return
            attempt += 1
            if not _retryable(slot.last_exception):
                slot.dropped += len(batch)
                log.error("sink %s/%s: dropped %d event(s): permanent failure: %s", slot.callback_name,
                          slot.instance_id, len(batch), slot.last_error)
                return
            if attempt > self.settings.max_retries:
                slot.dropped += len(batch)
                log.error("sink %s/%s: dropped %d event(s) after %d attempts; last error: %s",
                          slot.callback_name, slot.instance_id, len(batch), attempt, slot.last_error)
                return
            slot.retried += 1
            delay = min(self.settings.retry_max_delay, self.settings.retry_base_delay * 2 ** (attempt - 1))
            if self._closing:
                delay = min(delay, 0.5)
            log.warning("sink %s/%s: send failed (%s); retry %d in %.2fs", slot.callback_name,
                        slot.instance_id, slot.last_error, attempt, delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _log_drop(self, slot: SinkSlot) -> None:
        now = time.monotonic()
        if now - self._drop_logged_at >= 60:
            self._drop_logged_at = now
            log.error("sink %s/%s: queue full (%d); dropping oldest events (dropped so far: %d)",
                      slot.callback_name, slot.instance_id, self.settings.queue_size, slot.dropped)

    async def _sweep(self) -> None:
        interval = max(0.05, min(60.0, self.settings.idle_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            await self.evict_idle()

    async def evict_idle(self) -> int:
        slots = self.pool.evictable(time.monotonic(), force=self.pool.over_capacity())
        for slot in slots:
            self.pool.remove(slot)
            await self._close_sink(slot)
        return len(slots)

    async def _close_sink(self, slot: SinkSlot) -> None:
        try:
            await asyncio.wait_for(slot.sink.aclose(), 10)
        except Exception as exc:  # closing must not stop the others
            log.warning("sink %s/%s: aclose failed: %s", slot.callback_name, slot.instance_id,
                        slot.scrub(str(exc)))

    # introspection / shutdown --------------------------------------------------------------------------
    def pending(self) -> int:
        return sum(len(s.queue) + s.inflight for s in self.pool.slots.values())

    def stats(self) -> list[dict[str, Any]]:
        return [
            {"callback_name": s.callback_name, "instance_id": s.instance_id, "queued": len(s.queue),
             "in_flight": s.inflight, "accepted": s.queued, "sent": s.sent, "retried": s.retried,
             "dropped": s.dropped, "failed_sends": s.failed_sends, "last_error": s.last_error,
             "last_error_at": s.last_error_at}
            for s in sorted(self.pool.slots.values(), key=lambda s: (s.callback_name, s.instance_id))
        ]

    async def drain(self, timeout: float) -> bool:
        """Flush every queue now (no lingering); True when all accepted events were handled in time."""
        self._closing = True
        for slot in self.pool.slots.values():
            if slot.wake is not None:
                slot.wake.set()
        tasks = [s.task for s in self.pool.slots.values() if s.task is not None and not s.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return self.pending() == 0

    async def aclose(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace if grace is None else grace
        if self._sweeper is not None:
            self._sweeper.cancel()
        drained = await self.drain(grace)
        if not drained:
            log.error("shutdown: %d event(s) still undelivered after %.1fs grace", self.pending(), grace)
        for slot in list(self.pool.slots.values()):
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()
                slot.dropped += len(slot.queue) + slot.inflight
            self.pool.remove(slot)
            await self._close_sink(slot)
        for sink_class in self.pool.sink_classes:
            try:
                await sink_class.shutdown()
            except Exception as exc:
                log.warning("sink class %s: shutdown failed: %s", sink_class.callback_name, type(exc).__name__)
