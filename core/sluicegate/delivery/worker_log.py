"""A serving worker's event log: what the worker appends at request time and the delivery process tails.

Layout (one directory per worker process, claimed with ``flock`` as the spool's ``p<N>`` slots are)::

    <spool_dir>/w<N>/.lock                 held by the worker for its lifetime
    <spool_dir>/w<N>/<segment>.log         the log, cut into numbered segments (oldest first)

A segment is a sequence of framed records ``<u32 length><u8 kind><payload>``:

- ``R`` a route: ``<u32 ref>`` + JSON ``{callback_name, instance_id, callback_vars (resolved), trusted, redact}``,
  written once per segment before the first event that names it; ``ref`` numbers routes within the segment;
- ``E`` an event: ``<u16 count><u32 ref> * count`` + the event's JSON, encoded once: the routes the worker resolved
  for it when it accepted the request (already chosen by success or failure).

The worker buffers records and writes them every ``spool_flush_interval`` (or as soon as 256 events wait; at once
when the interval is 0) in one ``write`` on a descriptor kept open: a SIGKILL of a worker loses at most one
interval, as with the spool. A worker never appends to a segment it did not open: a new worker process on the same
slot starts a new segment, so a record torn by a kill stays at the end of its segment, where the reader skips it
once a newer segment exists. Segments are deleted by the delivery process once what they hold is safe with it
(:mod:`sluicegate.delivery.service`); past ``spool_max_bytes`` (the delivery process is down for long) a worker
deletes its own oldest segments and says so.

The files hold resolved callback variables, secrets included (the delivery process builds the sinks from them):
directories ``0700``, files ``0600``, as the spool's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from sluicegate.files import claim_slot
from sluicegate.sinks.pool import SinkPool
from sluicegate.sinks.redaction import redact
from sluicegate.sinks.vars import encode_vars

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluicegate.config import DeliverySettings
    from sluicegate.events import LogEvent
    from sluicegate.routing import CallbackSet, Route
    from sluicegate.sinks.pool import SinkSlot

__all__ = ("LogTail", "WorkerLog", "worker_dirs")

log = logging.getLogger("sluicegate.delivery")

_FRAME = struct.Struct("<IB")
_REF = struct.Struct("<I")
_COUNT = struct.Struct("<H")
_ROUTE, _EVENT = ord("R"), ord("E")
_MAX_RECORD = 256 * 1024 * 1024
_EARLY_FLUSH_EVENTS = 256
_READ_CHUNK = 1024 * 1024
_SUFFIX = ".log"
_encoder = msgspec.json.Encoder()
_PREPARED_MAX = 50_000
"""Route sets whose record parts a worker keeps (one per key in use; a changed key's old set is dropped with the
lot when this fills)."""
_Prepared = tuple[int, bool, bytes]  # routes, whether all of them redact, <u16 count><u32 ref> * count


def segment_name(number: int) -> str:
    return f"{number:012d}{_SUFFIX}"


def segment_numbers(directory: Path) -> list[int]:
    """The segment numbers present in ``directory``, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(n[:-len(_SUFFIX)]) for n in names if n.endswith(_SUFFIX) and n[:-len(_SUFFIX)].isdigit())


def worker_dirs(base: Path) -> list[Path]:
    """Every worker log directory (``w<N>``) under the spool directory ``base``."""
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    return sorted((base / n for n in names if n[:1] == "w" and n[1:].isdigit()), key=lambda p: int(p.name[1:]))


class WorkerLog:
    """The request path's end in a serving worker: ``submit()`` appends the event and its routes to the log.

    It stands where the :class:`~sluicegate.sinks.dispatcher.Dispatcher` stands in inline mode (``gateway.
    dispatcher``), with the same ``submit``/``start``/``aclose``/``drain`` calls, and holds no sink instance, batch
    or connection for delivery. ``slot_for`` builds a sink only for ``/key/health``'s probes (an admin or key holder
    asking), in a pool of its own that nothing delivers through.
    """

    def __init__(self, settings: DeliverySettings, spool_dir: str | os.PathLike[str]) -> None:
        self.settings = settings
        self.base = Path(spool_dir)
        self.root: Path | None = None
        self.submitted = 0  # route deliveries handed to the log (as the dispatcher counts them)
        self.events_written = 0
        self.dropped_bytes = 0
        self._lock_fd: int | None = None
        self._fd = -1
        self._segment = 0
        self._size = 0
        self._refs: dict[tuple[str, bool], int] = {}
        # id(CallbackSet) -> (the set, its success part, its failure part): see _prepare; cleared with the refs
        self._prepared: dict[int, tuple[CallbackSet, _Prepared | None, _Prepared | None]] = {}
        self._buffer: list[bytes] = []
        self._unwritten = 0  # events in the buffer
        self._early_flush = False
        self._flusher: asyncio.Task[None] | None = None
        self._drop_logged_at = 0.0
        self.probes = SinkPool(max_instances=settings.max_instances, idle_seconds=settings.idle_seconds)
        self._closing: set[asyncio.Task[None]] = set()

    # request path --------------------------------------------------------------------------------------
    def submit(self, event: LogEvent, callbacks: CallbackSet | None) -> int:
        """Append ``event`` with the routes of ``callbacks`` matching its status. Never awaits; returns the count."""
        if callbacks is None or not callbacks.routes:
            return 0
        prepared = self._prepared.get(id(callbacks))
        if prepared is None or prepared[0] is not callbacks:
            prepared = self._prepare(callbacks)
        chosen = prepared[1] if event.status == "success" else prepared[2]
        if chosen is None:
            return 0
        count, all_redact, refs = chosen
        # Every route redacts: only the redacted event is written (what no sink may see never reaches the disk).
        # Otherwise the event as it is, and the delivery process redacts for the routes that do.
        payload = _encoder.encode(redact(event) if all_redact else event)
        buffer = self._buffer
        buffer.append(_FRAME.pack(len(refs) + len(payload), _EVENT) + refs)
        buffer.append(payload)
        self._unwritten += 1
        self.submitted += count
        if self.settings.spool_flush_interval <= 0:
            self._flush_or_log()  # a write to the page cache, not awaited: survives SIGKILL
        elif self._unwritten >= _EARLY_FLUSH_EVENTS and not self._early_flush:
            self._early_flush = True
            asyncio.get_running_loop().call_soon(self._flush_early)
        return count

    def _prepare(self, callbacks: CallbackSet) -> tuple[CallbackSet, _Prepared | None, _Prepared | None]:
        """The event record's route part for a success and for a failure of ``callbacks`` (routes named in this
        segment first), kept while the set is in use: a key's set is built once and serves every request."""
        if len(self._prepared) >= _PREPARED_MAX:
            self._prepared.clear()
        success = [r for r in callbacks.routes if r.on_success]
        failure = [r for r in callbacks.routes if r.on_failure]
        success_part = self._refs_for(success)  # most sets log both: one part serves both (held per team)
        prepared = (callbacks, success_part, success_part if failure == success else self._refs_for(failure))
        self._prepared[id(callbacks)] = prepared
        return prepared

    def _refs_for(self, routes: list[Route]) -> _Prepared | None:
        if not routes:
            return None
        refs = self._refs
        ids: list[int] = []
        for route in routes:
            key = (route.instance_id, route.redact)
            ref = refs.get(key)
            if ref is None:
                ref = refs[key] = len(refs) + 1
                info = {"callback_name": route.callback_name, "instance_id": route.instance_id,
                        "callback_vars": encode_vars(route.callback_vars, reveal=True), "trusted": route.trusted,
                        "redact": route.redact}
                if route.redaction is not None:  # the delivery process applies it, off the request path
                    info["redaction"] = route.redaction.spec
                    info["redaction_source"] = route.redaction_source
                header = _REF.pack(ref) + _encoder.encode(info)
                self._buffer.append(_FRAME.pack(len(header), _ROUTE) + header)
            ids.append(ref)
        return len(ids), all(r.redact for r in routes), struct.pack(f"<H{len(ids)}I", len(ids), *ids)

    def slot_for(self, route: Route) -> SinkSlot:
        """A sink instance for a health probe (``/key/health``); nothing is delivered through it. Probes unused for
        ``idle_seconds`` (or past ``max_instances``) are closed as new ones are made."""
        now = time.monotonic()
        for idle in self.probes.evictable(now, force=self.probes.over_capacity()):
            self.probes.remove(idle)
            task = asyncio.get_running_loop().create_task(_close_probe(idle))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        slot = self.probes.get(route.instance_id, route.sink_class, route.callback_vars, trusted=route.trusted)
        slot.last_used = now
        return slot

    # writing ---------------------------------------------------------------------------------------------
    def flush_spool(self) -> int:
        """Write every buffered record in one write; returns the events written. On an OSError the segment is cut
        back to where it was and the records stay buffered for the next flush."""
        if not self._buffer or self._fd < 0:
            return 0
        data = b"".join(self._buffer)
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
            if self.settings.spool_fsync:
                os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        written = self._unwritten
        self._buffer.clear()
        self._unwritten = 0
        self._size += len(data)
        self.events_written += written
        if self._size >= self.settings.spool_segment_bytes:
            self._open_segment()
        return written

    def _flush_or_log(self) -> None:
        try:
            self.flush_spool()
        except OSError as exc:  # disk full, permissions: keep serving; the records wait in memory meanwhile
            log.error("worker log %s: write failed: %s", self.root, exc)

    def _flush_early(self) -> None:
        self._early_flush = False
        if self._flusher is not None and not self._flusher.done():
            self._flush_or_log()

    async def _flush_loop(self) -> None:
        interval = self.settings.spool_flush_interval
        while True:
            await asyncio.sleep(interval if interval > 0 else 1.0)
            self._flush_or_log()

    def _open_segment(self) -> None:
        """Start the next segment; routes are named again in it (its reader may start there)."""
        assert self.root is not None
        numbers = segment_numbers(self.root)
        number = max([self._segment, *numbers]) + 1
        fd = os.open(self.root / segment_name(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._segment = number
        self._size = 0
        self._refs = {}
        self._prepared = {}  # their refs named routes of the previous segment
        self._enforce_limit(numbers)

    def _enforce_limit(self, numbers: list[int]) -> None:
        """Past ``spool_max_bytes`` (nobody read this log for long): delete the oldest segments, and say so."""
        assert self.root is not None
        sizes = []
        for number in numbers:
            with contextlib.suppress(FileNotFoundError):
                sizes.append((number, os.path.getsize(self.root / segment_name(number))))
        total = sum(size for _, size in sizes)
        for number, size in sizes:
            if total <= self.settings.spool_max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.root / segment_name(number))
            total -= size
            self.dropped_bytes += size
            now = time.monotonic()
            if now - self._drop_logged_at >= 60:
                self._drop_logged_at = now
                log.error("worker log %s over spool_max_bytes (%d): deleted unread segment %d (%d bytes); is the "
                          "delivery process running?", self.root, self.settings.spool_max_bytes, number, size)

    # lifecycle -------------------------------------------------------------------------------------------
    async def start(self, resolve_sink: Callable[[str], Any] | None = None,
                    compile_policy: Callable[[Any], Any] | None = None) -> None:
        """Claim a ``w<N>`` slot and open a new segment in it; start the flusher. (The arguments are the
        dispatcher's: a worker log replays nothing, so it needs neither; redaction policies travel in the route
        headers and run in the delivery process.)"""
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        claimed = claim_slot(lambda n: self.base / f"w{n}" / ".lock")
        if claimed is None:
            raise RuntimeError(f"worker log: no free slot under {self.base}")
        index, self._lock_fd = claimed
        self.root = self.base / f"w{index}"
        self._open_segment()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    def pending(self) -> int:
        """Events accepted and not written to the log yet."""
        return self._unwritten

    @property
    def unwritten(self) -> int:
        return self._unwritten

    def stats(self) -> list[dict[str, Any]]:
        return []  # the sink instances live in the delivery process (``/-/sinks`` asks it)

    async def drain(self, timeout: float) -> bool:
        """Write what is buffered; True when nothing is left unwritten (delivery is the delivery process's)."""
        self._flush_or_log()
        return self._unwritten == 0

    async def aclose(self, grace: float | None = None) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._flush_or_log()
        if self._unwritten:
            log.error("shutdown: %d event(s) could not be written to the worker log %s", self._unwritten, self.root)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
        for slot in list(self.probes.slots.values()):
            self.probes.remove(slot)
            await _close_probe(slot)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=5)


async def _close_probe(slot: SinkSlot) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(slot.sink.aclose(), 5)


class LogTail:
    """The delivery process's reader of one worker's log: where it is (segment, offset) and the routes named so far
    in that segment, resolved once each by ``resolve`` (a route header's JSON -> a Route, or None when it cannot be
    built: the event still goes to its other routes)."""

    __slots__ = ("directory", "segment", "offset", "resolve", "_fd", "_routes", "_sets", "torn_bytes",
                 "events_read")

    def __init__(self, directory: Path, resolve: Callable[[dict[str, Any]], Route | None], *, segment: int = 0,
                 offset: int = 0) -> None:
        self.directory = directory
        self.segment = segment
        self.offset = offset
        self.resolve = resolve
        self._fd = -1
        self._routes: dict[int, Route | None] = {}
        self._sets: dict[bytes, list[Route]] = {}  # an event's route part -> its routes, in this segment
        self.torn_bytes = 0
        self.events_read = 0

    @property
    def name(self) -> str:
        return self.directory.name

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def unread_bytes(self) -> int:
        """Bytes written to this log and not read yet (segments after the current one included)."""
        total = 0
        for number in segment_numbers(self.directory):
            if number < self.segment:
                continue
            with contextlib.suppress(FileNotFoundError):
                size = os.path.getsize(self.directory / segment_name(number))
                total += size - self.offset if number == self.segment else size
        return max(0, total)

    def _open(self, number: int, offset: int) -> bool:
        try:
            fd = os.open(self.directory / segment_name(number), os.O_RDONLY)
        except FileNotFoundError:
            return False
        self.close()
        self._fd = fd
        self.segment = number
        self.offset = 0
        self._routes = {}
        self._sets = {}
        if offset:  # resuming mid-segment: the routes named before the offset, not the events
            self._parse(None, stop=offset)
        return True

    def read(self, limit: int) -> list[tuple[list[Route], bytes]]:
        """Up to ``limit`` events (their routes, their JSON) past the current position, moving on to the next
        segment once the writer has."""
        found: list[tuple[list[Route], bytes]] = []
        while len(found) < limit:
            if self._fd < 0:
                numbers = [n for n in segment_numbers(self.directory) if n >= self.segment]
                if not numbers:
                    break
                if numbers[0] != self.segment:
                    if self.segment and self.offset:
                        log.error("worker log %s: segment %d is gone before it was read to its end (deleted over "
                                  "spool_max_bytes?)", self.directory, self.segment)
                    self.offset = 0
                if not self._open(numbers[0], self.offset):
                    continue
            if self._parse(found, limit=limit):
                continue
            # nothing complete past the offset: the end of this segment, for now or for good
            later = [n for n in segment_numbers(self.directory) if n > self.segment]
            if not later:
                if os.fstat(self._fd).st_size > self.offset and not self._writer_alive():
                    self._cut_torn()  # its writer was killed mid-write and nobody took the slot since
                break
            if self._parse(found, limit=limit):  # the writer moved on: what it wrote here before that is complete
                continue
            self._cut_torn()
            self.close()
            self.segment, self.offset = later[0], 0
        return found

    def _cut_torn(self) -> None:
        size = os.fstat(self._fd).st_size
        if size > self.offset:
            self.torn_bytes += size - self.offset
            log.warning("worker log %s: skipped a torn record at the end of segment %d (%d byte(s))",
                        self.directory, self.segment, size - self.offset)
            self.offset = size

    def _writer_alive(self) -> bool:
        """Whether a worker holds this log's slot (a part record at the end is then still being written)."""
        try:
            fd = os.open(self.directory / ".lock", os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing releases the lock at once: a worker starting now claims the slot as usual
        return False

    def _parse(self, found: list[tuple[list[Route], bytes]] | None, *, limit: int = 0, stop: int = 0) -> bool:
        """Parse complete records from the offset on (up to ``stop`` when resuming, routes only); True when the
        offset moved."""
        start = self.offset
        while True:
            data = os.pread(self._fd, _READ_CHUNK if not stop else min(_READ_CHUNK, stop - self.offset),
                            self.offset)
            if len(data) < _FRAME.size:
                break
            at = 0
            while at + _FRAME.size <= len(data):
                length, kind = _FRAME.unpack_from(data, at)
                if length > _MAX_RECORD or kind not in (_ROUTE, _EVENT):
                    log.error("worker log %s: damaged record in segment %d at %d; the rest of the segment is "
                              "skipped", self.directory, self.segment, self.offset + at)
                    self.offset = os.fstat(self._fd).st_size
                    return True
                end = at + _FRAME.size + length
                if end > len(data):
                    if at == 0:  # one record larger than a chunk
                        data = os.pread(self._fd, _FRAME.size + length, self.offset)
                        if len(data) < _FRAME.size + length:
                            break
                        end = _FRAME.size + length
                    else:
                        break
                body = at + _FRAME.size
                if kind == _ROUTE:
                    (ref,) = _REF.unpack_from(data, body)
                    try:
                        info = msgspec.json.decode(data[body + _REF.size:end])
                        self._routes[ref] = self.resolve(info)
                    except msgspec.DecodeError:
                        self._routes[ref] = None
                    self._sets.clear()
                elif found is not None:
                    (count,) = _COUNT.unpack_from(data, body)
                    start_payload = body + _COUNT.size + 4 * count
                    key = data[body:start_payload]
                    routes = self._sets.get(key)
                    if routes is None:
                        refs = struct.unpack_from(f"<{count}I", data, body + _COUNT.size)
                        routes = self._sets[key] = [r for r in map(self._routes.get, refs) if r is not None]
                    self.events_read += 1
                    if routes:
                        found.append((routes, data[start_payload:end]))
                self.offset += end - at
                at = end
                if found is not None and len(found) >= limit:
                    return self.offset != start
                if stop and self.offset >= stop:
                    return self.offset != start
            if at == 0 or stop and self.offset >= stop:
                break
        return self.offset != start
