"""The durable spool: one append-only write-ahead log per process for every sink instance's events and acks.

Layout (one directory per process, so replicas and ``--workers`` never share a file)::

    <spool_dir>/p<N>/.lock                  flock'ed by the owning process for its lifetime
    <spool_dir>/p<N>/wal/<segment>.seg      the log, cut into numbered segments (oldest first)

A segment is a sequence of framed records ``<u32 length><u8 kind><payload>``:

- ``H`` an instance's route header: ``<u32 ref><u16 id length><instance id><JSON callback_name + resolved
  callback_vars>``; written once per segment, before the instance's first event there. ``ref`` names the instance
  in the ``E`` records of that segment;
- ``E`` an event: ``<u32 ref><u64 seq>`` + the event's JSON (as the dispatcher encoded it); an instance's
  sequence numbers grow by one per event;
- ``K`` acknowledgements, batched: repeated ``<u16 id length><instance id><u64 seq>``: every event of the instance
  up to ``seq`` was delivered (or dropped and counted). A new segment starts with one holding the acks of every
  instance that still has events in older segments, so a segment can be deleted without losing acks.

One flush (every ``spool_flush_interval``, or at once when it is 0) appends the pending events of every instance
and the acks since the last flush in one write, on a file descriptor kept open. Events already delivered when the
flush comes are not written at all. A segment is cut at ``spool_segment_bytes`` and deleted when every instance
with events in it has acknowledged its last one there (the newest segment only when it is the last one left).
A torn record at the end of a segment (the process was killed mid-write) is cut off when the spool is loaded.
Spilled events (not in memory) are found again through a compact per-instance index of (segment, offset, seq).
The files hold the sinks' resolved variables, secrets included (that is what rebuilding a sink takes): the
directories are created ``0700`` and the files ``0600``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
from array import array
from pathlib import Path
from typing import Any

import msgspec

from sluicegate.files import claim_slot

__all__ = ("InstanceLog", "Segment", "Spool")

log = logging.getLogger("sluicegate.spool")

_FRAME = struct.Struct("<IB")
_EVENT_HEAD = struct.Struct("<IQ")  # ref, seq
_EVENT_RECORD = struct.Struct("<IBIQ")  # frame + event head, packed at once
_HEADER_HEAD = struct.Struct("<IH")  # ref, id length
_ACK_ID = struct.Struct("<H")
_SEQ = struct.Struct("<Q")
_HEADER, _EVENT, _ACKS = ord("H"), ord("E"), ord("K")
_MAX_RECORD = 256 * 1024 * 1024
_WAL = "wal"
_NO_INDEX = array("Q")  # never written to: InstanceLog._index_add replaces it first


def _frame(kind: int, payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), kind) + payload


def _acks_record(acks: list[tuple[bytes, int]]) -> bytes:
    return _frame(_ACKS, b"".join(_ACK_ID.pack(len(ident)) + ident + _SEQ.pack(seq) for ident, seq in acks))


class Segment:
    """One file of the log. ``instances``: instance log -> [last seq written here, bytes of its records here]."""

    __slots__ = ("number", "size", "instances", "outstanding")

    def __init__(self, number: int, size: int = 0) -> None:
        self.number = number
        self.size = size
        self.instances: dict[InstanceLog, list[int]] = {}
        self.outstanding = 0  # instances whose last seq here is not acknowledged yet


class InstanceLog:
    """The spool state of one sink instance. Sequence numbers: ``acked <= mem_seq < next_seq``.

    ``mem_seq`` is the highest seq handed to memory (the dispatcher's queue); events above it are *spilled*:
    only in the log on disk (or in ``pending``, waiting for the next flush).
    """

    __slots__ = ("spool", "instance_id", "ident", "ref", "header", "header_info", "header_segment", "pending",
                 "next_seq", "acked", "acked_written", "written_seq", "mem_seq", "spans", "segments_in",
                 "disk_bytes", "_index", "_index_head")

    def __init__(self, spool: Spool, instance_id: str, header: bytes) -> None:
        self.spool = spool
        self.instance_id = instance_id
        self.ident = instance_id.encode()
        self.ref = spool.new_ref()
        self.header = header
        self.header_info: dict[str, Any] | None = None
        self.header_segment: Segment | None = None  # the segment that has this instance's header
        self.pending: list[tuple[int, bytes]] = []  # (seq, the event's JSON)
        self.next_seq = 1
        self.acked = 0
        self.acked_written = 0
        self.written_seq = 0  # highest seq on disk (a failed flush may have written part of a batch)
        self.mem_seq = 0
        # [segment, last seq there] with events not yet acknowledged, oldest first: a list, as it holds one or two
        # (a deque would cost ~600 bytes for each of 20,000 instances)
        self.spans: list[list[Any]] = []
        self.segments_in = 0  # segments on disk holding events of this instance
        self.disk_bytes = 0
        # where the spilled events are, in seq order: (segment, offset, seq) triples in one array, 24 bytes an
        # event whatever the backlog; ``_index_head`` is the first triple still needed. The shared empty one until
        # something spills (most of 20,000 instances never do: 80 bytes each saved)
        self._index = _NO_INDEX
        self._index_head = 0

    # counts ---------------------------------------------------------------------------------------------
    @property
    def spilled(self) -> int:
        """Events held only by the spool, not in memory."""
        return self.next_seq - 1 - self.mem_seq

    @property
    def unwritten(self) -> int:
        return len(self.pending)

    @property
    def bytes(self) -> int:
        """Bytes of this instance's records in segments still on disk."""
        return self.disk_bytes

    @property
    def empty(self) -> bool:
        return not self.pending and not self.segments_in and self.spilled <= 0

    @property
    def directory(self) -> Path:
        return self.spool.wal_dir

    # writing ---------------------------------------------------------------------------------------------
    def add(self, event: bytes) -> int:
        """Append an event (its JSON) to be written at the next flush; returns its seq."""
        seq = self.next_seq
        self.next_seq += 1
        self.pending.append((seq, event))
        self.spool.dirty[self] = None
        return seq

    def ack(self, seq: int) -> None:
        if seq <= self.acked:
            return
        self.acked = seq
        self.spool.dirty[self] = None
        spans = self.spans
        done = 0
        while done < len(spans) and spans[done][1] <= seq:
            segment = spans[done][0]
            done += 1
            segment.outstanding -= 1
            if segment.outstanding == 0:
                self.spool.finished.append(segment)
        if done:
            del spans[:done]

    def flush(self) -> int:
        """Write what is pending (the whole process's log: one write for every instance)."""
        return self.spool.flush()

    def _index_add(self, segment: int, offset: int, seq: int) -> None:
        if self._index is _NO_INDEX:
            self._index = array("Q")
        self._index.extend((segment, offset, seq))

    def _index_prune(self) -> None:
        """Forget index entries of events already in memory; compact the arrays now and then."""
        head, index = self._index_head, self._index
        count = len(index) // 3
        while head < count and index[3 * head + 2] <= self.mem_seq:
            head += 1
        if head >= 1024 and head * 2 >= count:
            del index[:3 * head]
            head = 0
        elif head == count and head:
            self._index = _NO_INDEX  # all read back: give the array's memory back too
            head = 0
        self._index_head = head

    @property
    def indexed(self) -> int:
        return len(self._index) // 3 - self._index_head

    # reading ---------------------------------------------------------------------------------------------
    def read(self, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` spilled events (seq, JSON), in order: first from disk (by the index), then from
        ``pending``."""
        found: list[tuple[int, bytes]] = []
        self._index_prune()
        fd, fd_segment = -1, -1
        try:
            index = self._index
            while self._index_head < len(index) // 3 and len(found) < limit:
                head = self._index_head
                number, offset, seq = index[3 * head], index[3 * head + 1], index[3 * head + 2]
                if seq <= self.mem_seq:
                    self._index_head = head + 1
                    continue
                if number != fd_segment:
                    if fd >= 0:
                        os.close(fd)
                        fd = -1
                    fd = os.open(self.spool.segment_path(number), os.O_RDONLY)
                    fd_segment = number
                frame = os.pread(fd, _FRAME.size, offset)
                if len(frame) < _FRAME.size:
                    raise ValueError(f"spool segment {number}: short read at {offset}")
                length, kind = _FRAME.unpack(frame)
                payload = os.pread(fd, length, offset + _FRAME.size)
                if kind != _EVENT or len(payload) < length or _EVENT_HEAD.unpack_from(payload)[1] != seq:
                    raise ValueError(f"spool segment {number}: no event {seq} of {self.instance_id} at {offset}")
                found.append((seq, payload[_EVENT_HEAD.size:]))
                self.mem_seq = seq
                self._index_head = head + 1
        finally:
            if fd >= 0:
                os.close(fd)
        if len(found) < limit and self.pending and self.spilled > 0:
            # not written yet: hand them over from memory (they stay pending, to be written for durability)
            start = max(0, self.mem_seq + 1 - self.pending[0][0])
            taken = self.pending[start:start + limit - len(found)]
            if taken:
                found.extend(taken)
                self.mem_seq = taken[-1][0]
        self._index_prune()
        return found


class Spool:
    """The process's spool directory: claims a free ``p<N>`` slot under ``base`` with ``flock``; owns the log."""

    def __init__(self, base: str | os.PathLike[str], *, max_bytes: int, segment_bytes: int, fsync: bool) -> None:
        self.base = Path(base)
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, segment_bytes)
        self.fsync = fsync
        self.root = self.base
        self.wal_dir = self.base / _WAL
        self.total_bytes = 0
        self.logs: dict[str, InstanceLog] = {}
        self.dirty: dict[InstanceLog, None] = {}  # instances with pending events or new acks (ordered set)
        self.finished: list[Segment] = []  # segments whose events all got acknowledged since the last flush
        self.segments: dict[int, Segment] = {}  # by number, oldest first
        self.current: Segment | None = None  # the segment being appended to (the newest)
        self._fd = -1
        self._lock_fd: int | None = None
        self._segment_counter = 0
        self._ref_counter = 0

    # slot ------------------------------------------------------------------------------------------------
    def acquire(self) -> Path:
        """Lock the first free ``p<N>`` directory (a dead process's directory is free again: replay it)."""
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        claimed = claim_slot(lambda n: self.base / f"p{n}" / ".lock")
        if claimed is None:
            raise RuntimeError(f"spool: no free slot under {self.base}")
        index, self._lock_fd = claimed
        self.root = root = self.base / f"p{index}"
        self.wal_dir = root / _WAL
        self.wal_dir.mkdir(exist_ok=True, mode=0o700)
        return root

    def release(self) -> None:
        self._close_current()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def new_ref(self) -> int:
        self._ref_counter += 1
        return self._ref_counter

    def segment_path(self, number: int) -> str:
        return os.path.join(self.wal_dir, f"{number:012d}.seg")

    def log_for(self, instance_id: str, header: bytes) -> InstanceLog:
        existing = self.logs.get(instance_id)
        if existing is not None:
            if not existing.header:
                existing.header = header
            return existing
        created = InstanceLog(self, instance_id, header)
        self.logs[instance_id] = created
        return created

    def forget(self, instance_id: str) -> None:
        instance_log = self.logs.get(instance_id)
        if instance_log is not None and instance_log.empty:
            del self.logs[instance_id]
            self.dirty.pop(instance_log, None)

    # writing ---------------------------------------------------------------------------------------------
    def flush(self) -> int:
        """Append every instance's pending events and the new acks in one write; delete finished segments.

        Returns the number of events written. On an OSError the file is cut back to where it was and nothing
        pending is lost (it is tried again at the next flush).
        """
        written = 0
        if self.dirty:
            dirty = list(self.dirty)
            self.dirty.clear()
            try:
                written = self._append(dirty)
            except BaseException:
                for instance_log in dirty:
                    self.dirty[instance_log] = None
                raise
        self._collect()
        return written

    def _append(self, dirty: list[InstanceLog]) -> int:
        chunks: list[bytes] = []
        # what the write makes true, applied once it succeeded: (log, seq, offset in the chunks, record length)
        events: list[tuple[InstanceLog, int, int, int]] = []
        headers: list[InstanceLog] = []
        acks: list[tuple[InstanceLog, int]] = []
        segment = self.current
        used = 0  # bytes in ``chunks``
        has_events = segment is not None and bool(segment.instances)
        limit = self.segment_bytes
        written = 0
        for instance_log in dirty:
            pending = instance_log.pending
            if not pending:
                continue
            skip = max(instance_log.acked, instance_log.written_seq)
            ref = instance_log.ref
            for seq, payload in pending:
                if seq <= skip:
                    continue  # delivered before it was written (nothing left to keep), or already written
                record = _EVENT_RECORD.pack(_EVENT_HEAD.size + len(payload), _EVENT, ref, seq) + payload
                if segment is None or (has_events and segment.size + used + len(record) > limit):
                    if segment is not None:
                        self._write(segment, chunks, events, headers, acks)
                        chunks, events, headers, acks, used = [], [], [], [], 0
                    segment, used = self._open_segment(chunks), sum(map(len, chunks))
                    has_events = False
                if instance_log.header_segment is not segment and (not headers or headers[-1] is not instance_log):
                    header = _frame(_HEADER, _HEADER_HEAD.pack(instance_log.ref, len(instance_log.ident))
                                    + instance_log.ident + instance_log.header)
                    chunks.append(header)
                    used += len(header)
                    headers.append(instance_log)
                events.append((instance_log, seq, used, len(record)))
                chunks.append(record)
                used += len(record)
                has_events = True
                written += 1
        for instance_log in dirty:
            if instance_log.acked > instance_log.acked_written:
                if instance_log.segments_in:  # acks only matter for events on disk
                    acks.append((instance_log, instance_log.acked))
                else:
                    instance_log.acked_written = instance_log.acked
        if acks and segment is not None:
            chunks.append(_acks_record([(entry.ident, seq) for entry, seq in acks]))
        if segment is not None and chunks:
            self._write(segment, chunks, events, headers, acks)
        for instance_log in dirty:
            instance_log.pending.clear()  # written, or delivered already
        return written

    def _open_segment(self, chunks: list[bytes]) -> Segment:
        """Start a new segment (the old one stays until acknowledged); begin it with the acks older ones need."""
        previous = self.current
        number = self._segment_counter + 1
        fd = os.open(self.segment_path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._close_current()
        self._fd = fd
        self._segment_counter = number
        segment = Segment(number)
        self.segments[number] = segment
        self.current = segment
        snapshot = [(entry.ident, entry.acked) for entry in self.logs.values() if entry.segments_in and entry.acked]
        if snapshot:
            chunks.append(_acks_record(snapshot))
        if previous is not None and previous.outstanding == 0:
            self.finished.append(previous)
        return segment

    def _close_current(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def _write(self, segment: Segment, chunks: list[bytes], events: list[tuple[InstanceLog, int, int, int]],
               headers: list[InstanceLog], acks: list[tuple[InstanceLog, int]]) -> None:
        data = b"".join(chunks)
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
            if self.fsync:
                os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, segment.size)  # no half record in the middle of the log
            raise
        base = segment.size
        segment.size += len(data)
        self.total_bytes += len(data)
        for instance_log in headers:
            instance_log.header_segment = segment
        number = segment.number
        for instance_log, seq, offset, length in events:
            entry = segment.instances.get(instance_log)
            if entry is None:
                segment.instances[instance_log] = [seq, length]
                instance_log.segments_in += 1
            else:
                entry[0] = seq
                entry[1] += length
            instance_log.disk_bytes += length
            instance_log.written_seq = seq
            spans = instance_log.spans
            if spans and spans[-1][0] is segment:
                spans[-1][1] = seq
            else:
                spans.append([segment, seq])
                segment.outstanding += 1
            if seq > instance_log.mem_seq:
                instance_log._index_add(number, base + offset, seq)
        for instance_log, seq in acks:
            instance_log.acked_written = max(instance_log.acked_written, seq)

    # deleting --------------------------------------------------------------------------------------------
    def _collect(self) -> None:
        """Delete segments whose events are all acknowledged; the newest one only when it is the last left."""
        if self.finished:
            finished, self.finished = self.finished, []
            for segment in finished:
                if (segment.outstanding == 0 and segment is not self.current
                        and self.segments.get(segment.number) is segment):
                    self._delete(segment)
        current = self.current
        if current is not None and current.outstanding == 0 and len(self.segments) == 1:
            self._delete(current)

    def _delete(self, segment: Segment) -> None:
        if segment is self.current:
            self._close_current()
            self.current = None
        del self.segments[segment.number]
        self.total_bytes -= segment.size
        for instance_log, (_, length) in segment.instances.items():
            instance_log.segments_in -= 1
            instance_log.disk_bytes -= length
            if instance_log.header_segment is segment:
                instance_log.header_segment = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.segment_path(segment.number))

    def drop_oldest(self) -> list[tuple[InstanceLog, int, int, int]]:
        """Delete the oldest segment (spool over its size limit), acknowledged or not.

        Returns ``(instance log, last seq it held there, acked before, mem_seq before)`` for every instance that
        had events in it not yet acknowledged; their acks (and ``mem_seq``) advance to that seq; the dispatcher
        takes the lost events out of memory and counts them.
        """
        if not self.segments:
            return []
        segment = next(iter(self.segments.values()))
        lost: list[tuple[InstanceLog, int, int, int]] = []
        for instance_log, (last, _) in list(segment.instances.items()):
            if last > instance_log.acked:
                lost.append((instance_log, last, instance_log.acked, instance_log.mem_seq))
                instance_log.ack(last)
                if instance_log.mem_seq < last:
                    instance_log.mem_seq = last
                instance_log._index_prune()
        self._delete(segment)
        return lost

    # loading ---------------------------------------------------------------------------------------------
    def load_existing(self) -> list[InstanceLog]:
        """Replay what an earlier process left in this slot: every instance with unacknowledged events, loaded.

        Segments are read in order; each instance's unacknowledged events are indexed in order (not decoded: they
        are read back as the sink takes them). A torn last record is cut off. Segments with nothing left to
        deliver are deleted once a new segment holds the acks the remaining ones need.
        """
        legacy = [p.parent.name for p in self.root.glob("*/*.seg") if p.parent.name != _WAL]
        if legacy:  # the per-instance layout of earlier versions: not read by this one
            log.error("spool %s: %d segment file(s) in the old per-instance layout (%s) are not replayed; they "
                      "are left in place", self.root, len(legacy), ", ".join(sorted(set(legacy))[:5]))
        numbers = sorted(int(p.stem) for p in self.wal_dir.glob("*.seg") if p.stem.isdigit())
        found: dict[str, InstanceLog] = {}
        for number in numbers:
            path = self.segment_path(number)
            with open(path, "rb") as handle:
                data = handle.read()
            segment = Segment(number)
            refs: dict[int, InstanceLog] = {}
            offset = 0
            while offset + _FRAME.size <= len(data):
                length, kind = _FRAME.unpack_from(data, offset)
                end = offset + _FRAME.size + length
                if length > _MAX_RECORD or end > len(data) or kind not in (_HEADER, _EVENT, _ACKS):
                    break
                start = offset + _FRAME.size
                if kind == _EVENT:
                    ref, seq = _EVENT_HEAD.unpack_from(data, start)
                    instance_log = refs.get(ref)
                    if instance_log is not None:
                        entry = segment.instances.get(instance_log)
                        if entry is None:
                            segment.instances[instance_log] = [seq, end - offset]
                            instance_log.segments_in += 1
                        else:
                            entry[0] = seq
                            entry[1] += end - offset
                        instance_log.disk_bytes += end - offset
                        instance_log.next_seq = max(instance_log.next_seq, seq + 1)
                        instance_log._index_add(number, offset, seq)
                elif kind == _HEADER:
                    ref, id_length = _HEADER_HEAD.unpack_from(data, start)
                    ident_end = start + _HEADER_HEAD.size + id_length
                    instance_id = data[start + _HEADER_HEAD.size:ident_end].decode()
                    instance_log = found.get(instance_id)
                    if instance_log is None:
                        instance_log = found[instance_id] = InstanceLog(self, instance_id, b"")
                    with contextlib.suppress(msgspec.DecodeError):
                        instance_log.header_info = msgspec.json.decode(data[ident_end:end])
                        instance_log.header = data[ident_end:end]
                    refs[ref] = instance_log
                else:
                    at = start
                    while at < end:
                        (id_length,) = _ACK_ID.unpack_from(data, at)
                        instance_id = data[at + _ACK_ID.size:at + _ACK_ID.size + id_length].decode()
                        (seq,) = _SEQ.unpack_from(data, at + _ACK_ID.size + id_length)
                        at += _ACK_ID.size + id_length + _SEQ.size
                        instance_log = found.get(instance_id)
                        if instance_log is None:
                            instance_log = found[instance_id] = InstanceLog(self, instance_id, b"")
                        instance_log.acked = max(instance_log.acked, seq)
                offset = end
            if offset < len(data):
                log.warning("spool: cut a torn record at the end of segment %d (%d byte(s))", number,
                            len(data) - offset)
                with open(path, "r+b") as handle:
                    handle.truncate(offset)
            segment.size = offset
            self.total_bytes += offset
            self.segments[number] = segment
            self._segment_counter = max(self._segment_counter, number)
        for segment in self.segments.values():
            for instance_log, (last, _) in segment.instances.items():
                if last > instance_log.acked:
                    instance_log.spans.append([segment, last])
                    segment.outstanding += 1
        loaded: list[InstanceLog] = []
        for instance_id, instance_log in found.items():
            acked = instance_log.acked
            instance_log.next_seq = max(instance_log.next_seq, acked + 1)
            instance_log.written_seq = instance_log.next_seq - 1
            instance_log.acked_written = acked
            instance_log.mem_seq = acked
            instance_log._index_prune()
            if instance_log.spilled > 0 or instance_log.segments_in:
                self.logs[instance_id] = instance_log
            if instance_log.spilled <= 0:
                continue
            if instance_log.header_info is None:
                log.error("spool %s: no readable header for instance %s; left in place (%d event(s))", self.wal_dir,
                          instance_id, instance_log.spilled)
                continue
            loaded.append(instance_log)
        if any(s.outstanding for s in self.segments.values()):
            # a new segment first, holding the acks the kept ones need; then delete what is done
            chunks: list[bytes] = []
            segment = self._open_segment(chunks)
            self._write(segment, chunks, [], [], [])
        for segment in list(self.segments.values()):
            if segment.outstanding == 0 and segment is not self.current:
                self._delete(segment)
        self._collect()
        return loaded
