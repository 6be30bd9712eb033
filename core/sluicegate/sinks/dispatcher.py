"""Delivery: ``submit()`` queues an event for each of its routes and returns at once.

Per sink instance: a bounded queue, batches up to ``max_batch_size``, ``send`` under the sink's timeout, retries
with exponential backoff and jitter. Instances fail alone. A partial batch lingers ``batch_interval`` for more: the
instance waits in one deadline heap shared by all instances (one timer for the earliest), and a send task exists
only while its instance is sending, so an instance with nothing to send holds no task, event or timer (10,000 teams
logging to two sinks each are 20,000 instances). ``aclose()`` drains every queue within a grace period, then closes
every sink.

Events wait as their JSON, encoded once in ``submit()`` (once more when a route redacts), shared by every queue and
the spool, and decoded when their batch goes out: 1.3 KB of bytes the collector never walks instead of a ~2.5 KB
tree of objects (at 10,000 teams ~20,000 events linger at a time; bench/).

With a spool (``delivery.spool``, on by default in a gateway): every accepted event not delivered yet is also
appended to the process's write-ahead log on disk by a background flusher (every ``spool_flush_interval``, one
write for all instances; at once when it is 0), and an acknowledgement follows each delivered batch. Past ``queue_size`` events stay on disk only ("spooled") and are
read back in order as the queue empties, so memory stays bounded however long a sink is down. Retryable failures
are retried without limit (the spool holds the backlog); past ``spool_max_bytes`` the oldest segments are dropped,
counted and logged once a minute. What a shutdown cannot deliver within its grace period stays in the spool and
is replayed by the next process that claims the spool slot.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from sluicegate.aio import bounded, cancel_and_wait
from sluicegate.events import LogEvent
from sluicegate.redaction.policy import RedactionMemo
from sluicegate.sinks.pool import SinkPool, SinkSlot
from sluicegate.sinks.redaction import redact
from sluicegate.sinks.spool import Spool
from sluicegate.sinks.vars import decode_vars, encode_vars

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Collection, Sequence

    from sluicegate.config import DeliverySettings, Settings
    from sluicegate.redaction.policy import CompiledPolicy
    from sluicegate.routing import CallbackSet, Route
    from sluicegate.sinks.base import Sink

__all__ = ("Dispatcher", "spool_base_for", "spool_dir_for")

log = logging.getLogger("sluicegate.delivery")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LogEvent)
_RECENT_DECODED = 1024
"""Decoded events kept for other routes of the same event, per generation (two generations: at most 2,048 events
and their JSON, ~8 MB for short chats)."""

_EARLY_FLUSH_EVENTS = 256
"""Spool writes happen every ``spool_flush_interval`` or as soon as this many events wait, whichever is first:
writing ~900 events at once stalled the loop ~7 ms (up to 20 ms at a segment change) at 2,000 req/s with two
sinks each (bench/: p99)."""

# A deadline this close is due: the loop runs a timer up to its clock resolution early, and waking again for the
# rest would cost a loop iteration for nothing.
_DUE_SLACK = 0.001

_PACE_TICK = 0.01
"""While due sends wait for the pace, the timer wakes this often and starts what the pace allows meanwhile."""
_PACE_BURST = 0.02
"""Sends the pace lets start at once: this many seconds' worth (8 at 400 a second), at least one."""


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


def spool_dir_for(settings: Settings) -> str | None:
    """Where this gateway spools: ``delivery.spool_dir``, else next to a SQLite file, else ``./sluicegate-spool``;
    None with the spool off."""
    if not settings.sluicegate_settings.delivery.spool:
        return None
    return spool_base_for(settings)


def spool_base_for(settings: Settings) -> str:
    """The spool directory whether or not the spool is on (the serving workers' logs live there in either case)."""
    delivery = settings.sluicegate_settings.delivery
    if delivery.spool_dir:
        return delivery.spool_dir
    url = settings.database_url
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        path = path.split("?", 1)[0]
        if path and path != ":memory:":
            return str(Path(path).resolve().parent / "sluicegate-spool")
    return "sluicegate-spool"


class Dispatcher:
    def __init__(self, settings: DeliverySettings, *, spool_dir: str | os.PathLike[str] | None = None) -> None:
        self.settings = settings
        self.spool = (Spool(spool_dir, max_bytes=settings.spool_max_bytes, segment_bytes=settings.spool_segment_bytes,
                            fsync=settings.spool_fsync) if spool_dir is not None and settings.spool else None)
        self._flusher: asyncio.Task[None] | None = None
        self._unflushed = 0  # events added to the spool since its last write
        self._early_flush = False
        self._spool_drop_logged_at = 0.0
        self.pool = SinkPool(max_instances=settings.max_instances, idle_seconds=settings.idle_seconds)
        self._send_slots = asyncio.Semaphore(settings.max_concurrent_sends)
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None
        self._drop_logged_at = 0.0
        self.submitted = 0
        self._recent: dict[int, tuple[bytes, LogEvent]] = {}  # id(JSON) -> (JSON, decoded), see _decode
        self._recent_older: dict[int, tuple[bytes, LogEvent]] = {}
        self.redaction_memo = RedactionMemo()  # a policy runs once per event, whatever the routes sharing it
        self._in_memory = 0  # events in the slots' queues (delivery.memory_events bounds it, with a spool)
        self._working = 0  # slots lingering or sending: drives the adaptive linger
        # lingering slots by deadline: (due, tie-breaker, slot); an entry whose due is no longer the slot's is stale
        self._due: list[tuple[float, int, SinkSlot]] = []
        self._due_order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._pace_tokens = 0.0  # sends the pace allows now (a token bucket refilled at _pace_rate())
        self._pace_at = 0.0  # loop time the tokens were counted

    # request path --------------------------------------------------------------------------------------
    def submit(self, event: LogEvent, callbacks: CallbackSet | None) -> int:
        """Queue ``event`` for every route of ``callbacks`` matching its status. Never awaits; returns the count."""
        if callbacks is None or not callbacks.routes:
            return 0
        success = event.status == "success"
        encoded: bytes | None = None
        redacted: bytes | None = None
        count = 0
        for route in callbacks.routes:
            if not (route.on_success if success else route.on_failure):
                continue
            if route.redact:
                if redacted is None:
                    redacted = _encoder.encode(redact(event))
                self._enqueue(route, redacted)
            else:
                if encoded is None:
                    encoded = _encoder.encode(event)
                self._enqueue(route, encoded)
            count += 1
        self.submitted += count
        return count

    def submit_encoded(self, encoded: bytes, routes: Sequence[Route]) -> int:
        """Queue an event that arrives as its JSON (a serving worker's log, read by the delivery process) for each
        of ``routes``, chosen by the worker when it accepted the request. A redacting route gets the redacted copy,
        decoded and encoded once for all of them. Never awaits; returns the count."""
        redacted: bytes | None = None
        count = 0
        for route in routes:
            if route.redact:
                if redacted is None:
                    try:
                        redacted = _encoder.encode(redact(_decoder.decode(encoded)))
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        log.error("sink %s/%s: dropped an event that does not decode (%s)", route.callback_name,
                                  route.instance_id, exc)
                        continue
                self._enqueue(route, redacted)
            else:
                self._enqueue(route, encoded)
            count += 1
        self.submitted += count
        return count

    def slot_for(self, route: Route) -> SinkSlot:
        slot = self.pool.get(route.instance_id, route.sink_class, route.callback_vars, trusted=route.trusted)
        slot.redaction = route.redaction  # the policy's key is part of the instance id: always the same policy
        return slot

    def _enqueue(self, route: Route, event: bytes) -> None:
        slot = self.slot_for(route)
        slot.last_used = time.monotonic()
        slot.queued += 1
        queue = slot.queue
        if self.spool is not None:
            if slot.log is None:
                info: dict[str, Any] = {"callback_name": route.callback_name,
                                        "callback_vars": encode_vars(route.callback_vars, reveal=True)}
                if route.redaction is not None:  # a replay must redact as this process would have
                    info["redaction"] = route.redaction.spec
                header = msgspec.json.encode(info)
                slot.log = self.spool.log_for(slot.instance_id, header)
            seq = slot.log.add(event)
            if (slot.log.spilled == 1 and len(queue) < self.settings.queue_size
                    and (self._in_memory < self.settings.memory_events or not self.settings.memory_events)):
                queue.append((seq, event))  # nothing spilled before it: it may wait in memory
                slot.log.mem_seq = seq
                self._in_memory += 1
            if self.settings.spool_flush_interval <= 0:
                slot.log.flush()  # a write to the page cache, not awaited: survives SIGKILL
            else:
                self._unflushed += 1
                if self._unflushed >= _EARLY_FLUSH_EVENTS and not self._early_flush:
                    self._early_flush = True
                    asyncio.get_running_loop().call_soon(self._flush_early)
        else:
            queue.append((0, event))
            self._in_memory += 1
            if len(queue) > self.settings.queue_size:
                del queue[0]  # O(queue_size), but only while a sink without a spool is down and its queue full
                self._in_memory -= 1
                slot.dropped += 1
                self._log_drop(slot)
        if slot.task is None:
            if not slot.due:
                self._working += 1
                self._schedule(slot)
            elif len(queue) + slot.spilled >= slot.sink.max_batch_size:
                self._start_send(slot)  # a full batch does not wait for the deadline

    # background ----------------------------------------------------------------------------------------
    async def start(self, resolve_sink: Callable[[str], type[Sink]] | None = None,
                    compile_policy: Callable[[Any], CompiledPolicy | None] | None = None) -> None:
        """Start background work; with a spool, claim a slot and replay what an earlier process left in it.

        ``resolve_sink`` maps a ``callback_name`` to its Sink class (the registry's ``get``) for the replay;
        ``compile_policy`` rebuilds the redaction policy an instance's events were queued under.
        """
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep())
        if self.spool is None:
            return
        self.spool.acquire()
        for instance_log in self.spool.load_existing():
            info = instance_log.header_info or {}
            try:
                if resolve_sink is None:
                    raise LookupError("no sink registry to rebuild it with")
                sink_class = resolve_sink(str(info.get("callback_name")))
                callback_vars = decode_vars(sink_class.Vars, info.get("callback_vars") or {})
                policy = None
                if info.get("redaction") is not None:  # never replayed unredacted
                    if compile_policy is None:
                        raise LookupError("no redactor registry to rebuild its redaction policy with")
                    policy = compile_policy(info["redaction"])
            except Exception as exc:  # plugin gone, vars no longer valid: keep the files, say so
                log.error("spool: cannot replay %d event(s) for sink %s/%s: %s; left in %s", instance_log.spilled,
                          info.get("callback_name"), instance_log.instance_id, type(exc).__name__,
                          instance_log.directory)
                continue
            # The spool keeps no Route: an API-written callback's instance id starts "api-" (LoggingResolver.route).
            slot = self.pool.get(instance_log.instance_id, sink_class, callback_vars,
                                 trusted=not instance_log.instance_id.startswith("api-"))
            slot.log = instance_log
            slot.redaction = policy
            log.warning("spool: replaying %d event(s) for sink %s/%s", instance_log.spilled, slot.callback_name,
                        slot.instance_id)
            if slot.task is None and not slot.due:
                self._working += 1
                self._schedule(slot)
        self._flusher = loop.create_task(self._flush_loop())

    def _linger(self) -> float:
        """How long a worker waits for a fuller batch: ``batch_interval``, stretched when many destinations
        are busy so the sends per second stay near ``max_sends_per_second`` (each send costs the event loop
        an HTTP round trip; 2,000 destinations at one event a second each would otherwise mean 2,000 sends)."""
        settings = self.settings
        if settings.max_sends_per_second <= 0 or settings.max_batch_interval <= settings.batch_interval:
            return settings.batch_interval
        return min(settings.max_batch_interval,
                   max(settings.batch_interval, self._working / settings.max_sends_per_second))

    # scheduling: a slot is idle (no task, no deadline), lingering (a deadline in the heap) or sending (a task) --
    def _schedule(self, slot: SinkSlot) -> None:
        """Send ``slot``'s queue now, or at its deadline when it holds less than a batch and may linger."""
        # Spilled events (a backlog, or past memory_events) count towards the batch: a full one goes at once.
        if (self._closing or self.settings.batch_interval <= 0
                or len(slot.queue) + slot.spilled >= max(1, slot.sink.max_batch_size)):
            self._start_send(slot)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + self._linger()
        slot.due = due
        heapq.heappush(self._due, (due, next(self._due_order), slot))
        if self._timer is None or due < self._timer_at:
            self._arm(loop, due)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._send_due)
        self._timer_at = when

    def _pace_rate(self) -> float:
        """Sends a second that lingering slots may start: ``max_sends_per_second``, or more when so many slots are
        busy that even ``max_batch_interval`` cannot bring them down to it (the pace never holds sends back below
        what the lingers need); 0 when unpaced."""
        settings = self.settings
        if settings.max_sends_per_second <= 0 or settings.max_batch_interval <= settings.batch_interval:
            return 0.0
        return max(settings.max_sends_per_second, self._working / settings.max_batch_interval)

    def _send_due(self) -> None:
        """The timer: start a send for every slot whose deadline has come, at most at the pace (:meth:`_pace_rate`);
        wait for the next deadline, or for the pace to allow more.

        Slots that began lingering together (every team's first request in the same second of a restart or a
        burst) come due together, one linger later and again after every send: without the pace, thousands of
        sends (encoding and POSTing) would run back to back on the loop that serves requests, every cycle.
        Held back, a slot sends a little later and lingers again from then, so the wave spreads out.
        """
        self._timer = None
        loop = asyncio.get_running_loop()
        heap = self._due
        now = loop.time()
        rate = 0.0 if self._closing else self._pace_rate()
        if rate:
            self._pace_tokens = min(max(1.0, rate * _PACE_BURST),
                                    self._pace_tokens + (now - self._pace_at) * rate)
            self._pace_at = now
        limit = now + _DUE_SLACK
        held = False
        while heap and heap[0][0] <= limit:
            due, _, slot = heap[0]
            if slot.due != due or slot.task is not None or slot.closed:
                heapq.heappop(heap)  # stale: sent meanwhile (a full batch), or closed
                continue
            if rate:
                if self._pace_tokens < 1.0:
                    held = True
                    break
                self._pace_tokens -= 1.0
            heapq.heappop(heap)
            self._start_send(slot)
        if held:
            self._arm(loop, now + max(_PACE_TICK, (1.0 - self._pace_tokens) / rate))
        elif heap:
            self._arm(loop, heap[0][0])

    def _start_send(self, slot: SinkSlot) -> None:
        slot.due = 0.0
        slot.task = asyncio.get_running_loop().create_task(self._send(slot))

    async def _send(self, slot: SinkSlot) -> None:
        try:
            await self._send_batches(slot)
        except asyncio.CancelledError:
            slot.task = None
            self._working -= 1
            raise
        except Exception as exc:  # a bug, not a failed send (those are retried in _deliver): the next event tries again
            # The traceback as text, scrubbed: an exception's message may quote what a destination answered.
            log.error("sink %s/%s: delivery stopped: %s", slot.callback_name, slot.instance_id,
                      slot.scrubber()("".join(traceback.format_exception(exc))))
            slot.task = None
            self._working -= 1
            return
        slot.task = None
        if (slot.queue or slot.spilled) and not slot.closed:
            self._schedule(slot)  # a partial batch left: linger for more
            return
        self._working -= 1

    async def _send_batches(self, slot: SinkSlot) -> None:
        """Send full batches (and, when closing or not lingering, everything) while there are any."""
        max_batch = max(1, slot.sink.max_batch_size)
        while True:
            # A send slot first, the batch after: a send waiting for one of the max_concurrent_sends holds no
            # events, so what waits stays in the queues (and past memory_events in the spool), not in tasks.
            await self._send_slots.acquire()
            if slot.spilled and len(slot.queue) < max_batch:
                try:
                    self._refill(slot, max_batch)
                except BaseException:
                    self._send_slots.release()
                    raise
            queue = slot.queue
            if not queue:
                self._send_slots.release()
                return
            batch = queue[:max_batch]
            del queue[:max_batch]
            self._in_memory -= len(batch)
            slot.inflight = len(batch)
            try:
                events = self._decode(slot, batch)
                if events:
                    await self._deliver(slot, events, held=True)
                else:
                    self._send_slots.release()
            finally:
                slot.inflight = 0
            if slot.log is not None:
                slot.log.ack(batch[-1][0])  # delivered or dropped for good: either way done
            if not (slot.spilled or len(slot.queue) >= max_batch or self._closing
                    or self.settings.batch_interval <= 0):
                return

    def _decode(self, slot: SinkSlot, batch: list[tuple[int, bytes]]) -> list[LogEvent]:
        """The batch's events as objects; one that does not decode (a damaged spool record) is dropped, counted
        and logged, and the rest go.

        An event routed to several instances is one bytes object in all their queues; their batches mostly go out
        together (they began lingering with the same request), so the objects decoded for one are kept a little
        while for the next (two generations of ``_RECENT_DECODED``): one decode per event instead of one per route.
        """
        recent, older = self._recent, self._recent_older
        events: list[LogEvent] = []
        policy = slot.redaction  # delivery side: the request never waited for it
        memo = self.redaction_memo
        for seq, payload in batch:
            hit = recent.get(id(payload)) or older.get(id(payload))
            if hit is not None and hit[0] is payload:  # the same bytes, alive in the cache: its id is its own
                events.append(hit[1] if policy is None else memo.redacted(payload, hit[1], policy))
                continue
            try:
                event = _decoder.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                slot.dropped += 1
                log.error("sink %s/%s: dropped event %d: it does not decode (%s)", slot.callback_name,
                          slot.instance_id, seq, exc)
                continue
            events.append(event if policy is None else memo.redacted(payload, event, policy))
            recent[id(payload)] = (payload, event)
        if len(recent) >= _RECENT_DECODED:
            self._recent_older, self._recent = recent, {}
        return events

    def _refill(self, slot: SinkSlot, max_batch: int) -> None:
        """Move spilled events back into memory, oldest first (a bounded read of the instance's log)."""
        assert slot.log is not None
        room = max(max_batch, min(self.settings.queue_size - len(slot.queue), 4 * max_batch))
        try:
            events = slot.log.read(room)
            slot.queue.extend(events)
            self._in_memory += len(events)
        except (OSError, ValueError) as exc:
            log.error("spool %s/%s: read failed: %s", slot.callback_name, slot.instance_id, exc)
            lost = slot.log.spilled
            slot.log.mem_seq = slot.log.next_seq - 1
            slot.log.ack(slot.log.mem_seq)
            slot.dropped += lost

    def _flush_early(self) -> None:
        """Write a busy spool before its interval is up: many small writes stall the loop less than one big one."""
        self._early_flush = False
        if self._flusher is None or self._flusher.done():  # not started, or shutting down: aclose writes the rest
            return
        self._flush_or_log()

    async def _flush_loop(self) -> None:
        interval = self.settings.spool_flush_interval
        interval = interval if interval > 0 else 1.0  # writes happen in submit(); this writes acks
        while True:
            await asyncio.sleep(interval)
            self._flush_or_log()

    def _flush_or_log(self) -> None:
        try:
            self.flush_spool()
        except OSError as exc:  # disk full, permissions: keep serving; events stay in memory meanwhile
            log.error("spool: flush failed: %s", exc)

    def flush_spool(self) -> int:
        """Write every pending event and acknowledgement; enforce ``spool_max_bytes``. Returns events written."""
        if self.spool is None:
            return 0
        self._unflushed = 0
        written = self.spool.flush()
        if len(self.spool.logs) > len(self.pool.slots):  # some instance was evicted: forget its log once empty
            for instance_id in [i for i in self.spool.logs if i not in self.pool.slots]:
                self.spool.forget(instance_id)
        while self.spool.total_bytes > self.spool.max_bytes:
            if not self._drop_oldest_spooled():
                break
        return written

    def _drop_oldest_spooled(self) -> bool:
        """Past the size limit: drop the log's oldest segment; count what it held per sink instance."""
        assert self.spool is not None
        if not self.spool.segments:
            return False
        total = 0
        hit: list[str] = []
        for instance_log, last, before_ack, before_mem in self.spool.drop_oldest():
            slot = self.pool.slots.get(instance_log.instance_id)
            lost = max(0, last - before_mem)  # spilled: only on disk
            if slot is not None:
                queue = slot.queue
                gone = 0
                while gone < len(queue) and queue[gone][0] <= last:
                    gone += 1
                del queue[:gone]
                self._in_memory -= gone
                lost += gone
            lost = min(lost, max(0, last - before_ack))
            total += lost
            if slot is not None and lost:
                slot.dropped += lost
                slot.spool_dropped += lost
                hit.append(f"{slot.callback_name}/{slot.instance_id}")
        now = time.monotonic()
        if total and now - self._spool_drop_logged_at >= 60:
            self._spool_drop_logged_at = now
            log.error("spool over its limit (%d bytes): dropped the oldest segment: %d event(s) of %d sink "
                      "instance(s) (%s) (counted in their dropped)", self.spool.max_bytes, total, len(hit),
                      ", ".join(hit[:5]) + (", ..." if len(hit) > 5 else ""))
        return True

    async def _deliver(self, slot: SinkSlot, batch: list[LogEvent], *, held: bool = False) -> None:
        """Send ``batch``, retrying; each attempt holds one of the send slots (``held``: the first one's is taken
        already), released while backing off."""
        attempt = 0
        retryable = True
        while True:
            if not held:
                await self._send_slots.acquire()
            held = False
            try:
                try:
                    await bounded(slot.sink.send(batch), slot.sink.send_timeout,
                                  f"sink {slot.callback_name}/{slot.instance_id}: send")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a sink raises on any failure, by contract
                    slot.failed_sends += 1
                    kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                    # Scrubbed of every form of the instance's secrets: a destination may echo the request back.
                    slot.last_error = slot.scrub(f"{kind}: {exc}", 500)
                    slot.last_error_at = time.time()
                    # Not the exception itself: its traceback holds the failed attempt's frames (the encoded
                    # body, the connection attempt), ~50 KB a slot; 20,000 failing slots kept ~1 GB alive.
                    retryable = _retryable(exc)
                else:
                    slot.sent += len(batch)
                    return
            finally:
                self._send_slots.release()
            attempt += 1
            if not retryable:
                slot.dropped += len(batch)
                log.error("sink %s/%s: dropped %d event(s): permanent failure: %s", slot.callback_name,
                          slot.instance_id, len(batch), slot.last_error)
                return
            if attempt > self.settings.max_retries and slot.log is None:
                slot.dropped += len(batch)
                log.error("sink %s/%s: dropped %d event(s) after %d attempts; last error: %s",
                          slot.callback_name, slot.instance_id, len(batch), attempt, slot.last_error)
                return
            slot.retried += 1
            delay = min(self.settings.retry_max_delay, self.settings.retry_base_delay * 2 ** (attempt - 1))
            if self._closing:
                delay = min(delay, 0.5)
            if attempt <= 3 or attempt % 100 == 0:  # a long outage must not flood the log
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
            if slot.log is not None and self.spool is not None:
                slot.log.flush()
                self.spool.forget(slot.instance_id)
            await self._close_sink(slot)
        return len(slots)

    async def retire(self, instance_ids: Collection[str], timeout: float | None = None) -> int:
        """Flush and close the instances of ``instance_ids`` (destinations no route leads to any more): a lingering
        batch goes now; an instance that cannot deliver within ``timeout`` (its sink is down) keeps its backlog and
        stays until it can. An event for it that arrives later builds it again. Returns the instances closed."""
        timeout = self.settings.shutdown_grace if timeout is None else timeout
        slots = [self.pool.slots[i] for i in instance_ids if i in self.pool.slots]
        for slot in slots:
            if slot.task is None and slot.due and not slot.closed:
                self._start_send(slot)  # no linger for a destination that is going away
        tasks = [s.task for s in slots if s.task is not None and not s.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        closed = 0
        for slot in slots:
            if slot.busy or self.pool.slots.get(slot.instance_id) is not slot:
                continue
            self.pool.remove(slot)
            if slot.log is not None and self.spool is not None:
                self.spool.forget(slot.instance_id)
            await self._close_sink(slot)
            closed += 1
        return closed

    async def _close_sink(self, slot: SinkSlot) -> None:
        try:
            await bounded(slot.sink.aclose(), 10, f"sink {slot.callback_name}/{slot.instance_id}: aclose")
        except Exception as exc:  # closing must not stop the others
            log.warning("sink %s/%s: aclose failed: %s", slot.callback_name, slot.instance_id,
                        slot.scrub(str(exc)))

    # introspection / shutdown --------------------------------------------------------------------------
    def pending(self) -> int:
        return sum(len(s.queue) + s.inflight + s.spilled for s in self.pool.slots.values())

    def stats(self) -> list[dict[str, Any]]:
        return [
            {"callback_name": s.callback_name, "instance_id": s.instance_id, "queued": len(s.queue),
             "in_flight": s.inflight, "spooled": s.spilled,
             "spool_unwritten": s.log.unwritten if s.log is not None else 0,
             "spool_bytes": s.log.bytes if s.log is not None else 0,
             "accepted": s.queued, "sent": s.sent, "retried": s.retried,
             "dropped": s.dropped, "failed_sends": s.failed_sends, "last_error": s.last_error,
             "last_error_at": s.last_error_at}
            for s in sorted(self.pool.slots.values(), key=lambda s: (s.callback_name, s.instance_id))
        ]

    async def drain(self, timeout: float) -> bool:
        """Flush every queue now (no lingering); True when all accepted events were handled in time."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lingering, self._due = self._due, []
        for due, _, slot in lingering:
            if slot.due == due and slot.task is None and not slot.closed:
                self._start_send(slot)
        tasks = [s.task for s in self.pool.slots.values() if s.task is not None and not s.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return self.pending() == 0

    async def aclose(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace if grace is None else grace
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._flusher is not None:
            self._flusher.cancel()
        drained = await self.drain(grace)
        if not drained:
            if self.spool is not None:
                log.warning("shutdown: %d event(s) undelivered after %.1fs grace stay in the spool (%s) for the "
                            "next start", self.pending(), grace, self.spool.root)
            else:
                log.error("shutdown: %d event(s) still undelivered after %.1fs grace", self.pending(), grace)
        for slot in list(self.pool.slots.values()):
            if slot.task is not None and not slot.task.done():
                if slot.log is None:
                    slot.dropped += len(slot.queue) + slot.inflight
                # bounded: a sink that ignores cancellation must not hang the shutdown
                await cancel_and_wait(slot.task, f"sink {slot.callback_name}/{slot.instance_id}: delivery")
            self.pool.remove(slot)
            await self._close_sink(slot)
        if self.spool is not None:
            try:
                self.flush_spool()
            except OSError as exc:
                log.error("shutdown: spool flush failed: %s", exc)
            self.spool.release()
        for sink_class in self.pool.sink_classes:
            try:
                await bounded(sink_class.shutdown(), 10, f"sink class {sink_class.callback_name}: shutdown")
            except Exception as exc:
                log.warning("sink class %s: shutdown failed: %s", sink_class.callback_name, type(exc).__name__)
