"""The durable spool: per sink instance, an append-only log of every accepted event and of delivery progress.

Layout (one directory per process, so replicas and ``--workers`` never share a file)::

    <spool_dir>/p<N>/.lock                 flock'ed by the owning process for its lifetime
    <spool_dir>/p<N>/<instance_id>/<segment>.seg

A segment is a sequence of framed records ``<u32 length><u8 kind><payload>``:

- ``H`` the route header (``callback_name`` and the resolved ``callback_vars``) so a restarted process can rebuild
  the sink; every segment starts with one, followed by an ``A`` record, so each segment stands alone;
- ``E`` an event: ``<u64 seq>`` + the event's JSON; sequence numbers grow by one per event of the instance;
- ``A`` an acknowledgement: ``<u64 seq>``: every event up to ``seq`` was delivered (or dropped and counted).

Events are written by a background flusher (or at once when the flush interval is 0), never awaited by a request.
A segment whose events are all acknowledged is deleted. A torn record at the end of a segment (the process was
killed mid-write) is cut off when the spool is loaded. The files hold the sink's resolved variables, secrets
included (that is what rebuilding the sink takes): the directories are created ``0700`` and the files ``0600``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
from collections import deque
from pathlib import Path
from typing import Any

import msgspec

from sluicegate.events import LogEvent

__all__ = ("InstanceLog", "Spool")

log = logging.getLogger("sluicegate.spool")

_FRAME = struct.Struct("<IB")
_SEQ = struct.Struct("<Q")
_HEADER, _EVENT, _ACK = ord("H"), ord("E"), ord("A")
_MAX_RECORD = 256 * 1024 * 1024
_decoder = msgspec.json.Decoder(LogEvent)
_encoder = msgspec.json.Encoder()


def _frame(kind: int, payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), kind) + payload


class Segment:
    __slots__ = ("number", "first", "last", "size", "events")

    def __init__(self, number: int, size: int = 0) -> None:
        self.number = number
        self.first = 0  # first event seq in this segment (0: none yet)
        self.last = 0
        self.size = size
        self.events = 0


class InstanceLog:
    """The spool of one sink instance. Sequence numbers: ``acked <= mem_seq < next_seq``.

    ``mem_seq`` is the highest seq handed to memory (the dispatcher's queue); events above it are *spilled*:
    only in the spool (or in ``pending``, waiting for the flusher).
    """

    __slots__ = ("spool", "instance_id", "directory", "header", "segments", "pending", "next_seq", "acked",
                 "acked_written", "mem_seq", "cursor", "header_info")

    def __init__(self, spool: Spool, instance_id: str, header: bytes) -> None:
        self.spool = spool
        self.instance_id = instance_id
        self.directory = spool.root / instance_id
        self.header = header
        self.header_info: dict[str, Any] | None = None
        self.segments: deque[Segment] = deque()
        self.pending: list[tuple[int, LogEvent]] = []
        self.next_seq = 1
        self.acked = 0
        self.acked_written = 0
        self.mem_seq = 0
        self.cursor: tuple[int, int] = (0, 0)  # (segment number, byte offset) of the next record to read

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
        return sum(s.size for s in self.segments)

    @property
    def empty(self) -> bool:
        return not self.segments and not self.pending

    # writing ---------------------------------------------------------------------------------------------
    def add(self, event: LogEvent) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.pending.append((seq, event))
        return seq

    def ack(self, seq: int) -> None:
        if seq > self.acked:
            self.acked = seq

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:012d}.seg"

    def flush(self) -> int:
        """Write pending events and the acknowledgement; delete finished segments. Returns events written."""
        written = len(self.pending)
        if written or self.acked != self.acked_written:
            current = self.segments[-1] if self.segments else None
            chunks: list[bytes] = []
            if current is None or current.size >= self.spool.segment_bytes:
                number = current.number + 1 if current else self.spool.next_segment_number(self)
                current = Segment(number)
                self.segments.append(current)
                chunks.append(_frame(_HEADER, self.header))
                chunks.append(_frame(_ACK, _SEQ.pack(self.acked)))
                self.spool.ensure_dir(self.directory)
            for seq, event in self.pending:
                chunks.append(_frame(_EVENT, _SEQ.pack(seq) + _encoder.encode(event)))
                if not current.first:
                    current.first = seq
                current.last = seq
                current.events += 1
            if self.acked != self.acked_written:
                chunks.append(_frame(_ACK, _SEQ.pack(self.acked)))
            data = b"".join(chunks)
            fd = os.open(self._path(current.number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, data)
                if self.spool.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            current.size += len(data)
            self.spool.total_bytes += len(data)
            self.pending.clear()
            self.acked_written = self.acked
        self._collect()
        return written

    def _collect(self) -> None:
        """Delete segments whose events are all acknowledged (the last one too once everything is)."""
        everything_done = not self.pending and self.acked >= self.next_seq - 1
        while self.segments:
            head = self.segments[0]
            if (len(self.segments) == 1 and not everything_done) or head.last > self.acked:
                break
            self._delete(self.segments.popleft())
        if not self.segments:
            with contextlib.suppress(OSError):
                self.directory.rmdir()

    def _delete(self, segment: Segment) -> None:
        self.spool.total_bytes -= segment.size
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(segment.number))

    def drop_oldest(self) -> int:
        """Delete the oldest segment (spool over its size limit); returns the last seq it held (0: none)."""
        if not self.segments:
            return 0
        segment = self.segments.popleft()
        self._delete(segment)
        last = segment.last
        if last > self.acked:
            self.acked = last
        if not self.segments:
            with contextlib.suppress(OSError):
                self.directory.rmdir()
        return last

    # reading ---------------------------------------------------------------------------------------------
    def read(self, limit: int) -> list[tuple[int, LogEvent]]:
        """Up to ``limit`` spilled events, in order (call :meth:`flush` first so pending ones are on disk)."""
        found: list[tuple[int, LogEvent]] = []
        if not self.segments:
            return found
        number, offset = self.cursor
        if number < self.segments[0].number:
            number, offset = self.segments[0].number, 0
        numbers = [s.number for s in self.segments if s.number >= number]
        for index, seg_number in enumerate(numbers):
            if seg_number != number:
                offset = 0
            with open(self._path(seg_number), "rb") as handle:
                handle.seek(offset)
                while len(found) < limit:
                    head = handle.read(_FRAME.size)
                    if len(head) < _FRAME.size:
                        break
                    length, kind = _FRAME.unpack(head)
                    payload = handle.read(length)
                    if len(payload) < length:
                        break
                    offset += _FRAME.size + length
                    if kind == _EVENT:
                        (seq,) = _SEQ.unpack_from(payload)
                        if seq > self.mem_seq:
                            found.append((seq, _decoder.decode(payload[_SEQ.size:])))
                            self.mem_seq = seq
            self.cursor = (seg_number, offset)
            if len(found) >= limit or index == len(numbers) - 1:
                break
        return found

    # loading ---------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Rebuild state from the segments on disk (after a restart); cut off a torn last record."""
        numbers = sorted(int(p.stem) for p in self.directory.glob("*.seg") if p.stem.isdigit())
        max_seq = 0
        for number in numbers:
            path = self._path(number)
            data = path.read_bytes()
            segment = Segment(number)
            offset = 0
            while offset + _FRAME.size <= len(data):
                length, kind = _FRAME.unpack_from(data, offset)
                end = offset + _FRAME.size + length
                if length > _MAX_RECORD or end > len(data) or kind not in (_HEADER, _EVENT, _ACK):
                    break
                payload = data[offset + _FRAME.size:end]
                if kind == _HEADER:
                    with contextlib.suppress(msgspec.DecodeError):
                        self.header_info = msgspec.json.decode(payload)
                        self.header = bytes(payload)
                else:
                    (seq,) = _SEQ.unpack_from(payload)
                    if kind == _ACK:
                        self.acked = max(self.acked, seq)
                    else:
                        segment.first = segment.first or seq
                        segment.last = seq
                        segment.events += 1
                        max_seq = max(max_seq, seq)
                offset = end
            if offset < len(data):
                log.warning("spool %s: cut a torn record at the end of segment %d (%d byte(s))",
                            self.instance_id, number, len(data) - offset)
                with open(path, "r+b") as handle:
                    handle.truncate(offset)
            segment.size = offset
            self.spool.total_bytes += offset
            self.segments.append(segment)
        self.next_seq = max(max_seq, self.acked) + 1
        self.acked_written = self.acked
        self.mem_seq = self.acked
        self.cursor = (self.segments[0].number, 0) if self.segments else (0, 0)


class Spool:
    """The process's spool directory: claims a free ``p<N>`` slot under ``base`` with ``flock``."""

    def __init__(self, base: str | os.PathLike[str], *, max_bytes: int, segment_bytes: int, fsync: bool) -> None:
        self.base = Path(base)
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, segment_bytes)
        self.fsync = fsync
        self.root = self.base
        self.total_bytes = 0
        self.logs: dict[str, InstanceLog] = {}
        self._lock_fd: int | None = None
        self._segment_counter = 0

    def acquire(self) -> Path:
        """Lock the first free ``p<N>`` directory (a dead process's directory is free again: replay it)."""
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        for index in range(4096):
            root = self.base / f"p{index}"
            root.mkdir(exist_ok=True, mode=0o700)
            fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._lock_fd = fd
            self.root = root
            return root
        raise RuntimeError(f"spool: no free slot under {self.base}")

    def release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def ensure_dir(self, directory: Path) -> None:
        directory.mkdir(exist_ok=True, mode=0o700)

    def next_segment_number(self, instance_log: InstanceLog) -> int:
        self._segment_counter += 1
        return self._segment_counter

    def log_for(self, instance_id: str, header: bytes) -> InstanceLog:
        existing = self.logs.get(instance_id)
        if existing is not None:
            return existing
        created = InstanceLog(self, instance_id, header)
        self.logs[instance_id] = created
        return created

    def load_existing(self) -> list[InstanceLog]:
        """Every instance log left in this slot by an earlier process, loaded; empty ones removed."""
        loaded: list[InstanceLog] = []
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            instance_log = InstanceLog(self, directory.name, b"")
            instance_log.load()
            if instance_log.segments:
                self._segment_counter = max(self._segment_counter, instance_log.segments[-1].number)
            if instance_log.header_info is None and instance_log.spilled > 0:
                log.error("spool %s: no readable header; left in place (%d event(s))", directory,
                          instance_log.spilled)
                continue
            if instance_log.spilled <= 0:
                for segment in list(instance_log.segments):
                    instance_log._delete(segment)
                with contextlib.suppress(OSError):
                    directory.rmdir()
                continue
            self.logs[instance_log.instance_id] = instance_log
            loaded.append(instance_log)
        return loaded

    def forget(self, instance_id: str) -> None:
        instance_log = self.logs.get(instance_id)
        if instance_log is not None and instance_log.empty:
            del self.logs[instance_id]
