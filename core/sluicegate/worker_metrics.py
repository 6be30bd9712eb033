"""One ``/metrics`` for all the workers of ``sluicegate serve --workers N``.

Each worker counts its own requests in memory (:class:`~sluicegate.metrics.RequestMetrics`; observing stays a few
microseconds, nothing shared on the request path). Every :data:`PUBLISH_INTERVAL` second, off the request path, and
once more when it shuts down gracefully, a worker writes a snapshot of its series and gauges to its own file; the
worker that answers a scrape merges its live series with the other workers' snapshots (counters and histogram
buckets summed, gauges from the freshest worker that has them). So a scrape counts every worker's requests, those
of the other workers as of at most one interval ago.

Layout (under the directory the workers' logs and the spool use, ``delivery.spool_dir``)::

    <spool_dir>/metrics/m<N>.lock     flock'ed by the worker that owns slot N, for its lifetime
    <spool_dir>/metrics/m<N>.snap     its last snapshot (msgpack), replaced atomically (temporary file + rename)

Counters must not go backwards: the snapshot of a worker that died (or was replaced) stays and is still summed,
and the next worker to claim its slot takes its counts over and adds its own to them, so the number of files is
the largest number of workers alive at once, not the number that ever ran. A fresh ``sluicegate serve`` starts
from zero (:func:`clear_stale`): like any Prometheus target that restarts, its counters reset. A dead worker's
gauges are dropped once its snapshot is older than :data:`GAUGES_FRESH_FOR` seconds; its counts stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sluicegate.aio import cancel_and_wait
from sluicegate.files import claim_slot, replace_file

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator

    from sluicegate.metrics import RequestMetrics, Snapshot

__all__ = ("GAUGES_FRESH_FOR", "PUBLISH_INTERVAL", "WorkerMetrics", "clear_stale")

log = logging.getLogger("sluicegate")

PUBLISH_INTERVAL = 1.0
"""Seconds between two snapshots of a worker (how far behind a scrape may see the other workers)."""
GAUGES_FRESH_FOR = 5.0
"""A snapshot older than this (its worker is gone or stuck) still counts, but its gauges are no longer shown."""
_MAX_SLOTS = 4096


def _slot_numbers(directory: Path) -> list[int]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted({int(n[1:-5]) for n in names if n[:1] == "m" and n.endswith(".lock") and n[1:-5].isdigit()})


def clear_stale(directory: str | os.PathLike[str]) -> int:
    """Delete the snapshots no live worker owns (``sluicegate serve`` starting: its counters start from 0); the
    number deleted. A slot whose lock is held (another server sharing the directory) is left alone."""
    base = Path(directory)
    deleted = 0
    for number in _slot_numbers(base):
        try:
            fd = os.open(base / f"m{number}.lock", os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            with contextlib.suppress(FileNotFoundError):
                (base / f"m{number}.snap").unlink()
                deleted += 1
        finally:
            os.close(fd)  # closing releases the lock
    for name in os.listdir(base) if base.is_dir() else ():
        if name.startswith(".m") and ".snap." in name:  # a write cut short by a kill before its rename
            with contextlib.suppress(OSError):
                (base / name).unlink()
    return deleted


class WorkerMetrics:
    """This worker's slot: publishes its snapshot, and renders a scrape merged with the other workers'."""

    def __init__(self, metrics: RequestMetrics, directory: str | os.PathLike[str], *,
                 interval: float = PUBLISH_INTERVAL, fresh_for: float = GAUGES_FRESH_FOR,
                 refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        self.metrics = metrics
        self.refresh = refresh  # awaited before each periodic snapshot (gauges read from elsewhere, e.g. Redis)
        self.base = Path(directory)
        self.interval = interval
        self.fresh_for = max(fresh_for, 3 * interval)
        self.slot: int | None = None
        self.carried: Snapshot | None = None
        self.publishes = 0
        self.publish_failures = 0
        self._lock_fd: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._published: tuple[int, object] | None = None  # (observations, gauges) last written
        self._read: dict[int, tuple[tuple[int, int], Snapshot]] = {}  # slot -> ((inode, size), decoded)

    @property
    def path(self) -> Path:
        return self.base / f"m{self.slot}.snap"

    async def start(self) -> None:
        """Claim the first free slot, take over what an earlier worker of that slot counted, start publishing."""
        try:
            self._claim()
        except OSError as exc:  # a read-only or full disk: serving goes on, each scrape shows one worker's part
            log.error("metrics: cannot publish this worker's metrics under %s (%s: %s); /metrics shows only the "
                      "requests of the worker that answers it", self.base, type(exc).__name__, exc)
            return
        try:
            self.carried = self.metrics.decode(self.path.read_bytes())
            self.carried.gauges = {}  # its gauges were about that worker's moment, not this one's
        except FileNotFoundError:
            pass
        except Exception as exc:  # a torn or foreign file: its counts are lost, ours start from 0
            log.warning("metrics: ignoring unreadable snapshot %s: %s: %s", self.path, type(exc).__name__, exc)
        self._publish_or_log()  # at once: the slot's file says this worker is there (and keeps what it took over)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _claim(self) -> None:
        claimed = claim_slot(lambda n: self.base / f"m{n}.lock", _MAX_SLOTS)
        if claimed is None:
            raise OSError(f"no free slot among {_MAX_SLOTS}")
        self.slot, self._lock_fd = claimed

    async def aclose(self) -> None:
        """Stop publishing, write the last snapshot (everything counted until now) and release the slot."""
        if self._task is not None:
            await cancel_and_wait(self._task, "metrics publisher", grace=5.0)
            self._task = None
        if self._lock_fd is None:
            return
        try:
            self.publish(force=True)
        except Exception as exc:
            log.error("metrics: the last snapshot could not be written to %s: %s: %s", self.path,
                      type(exc).__name__, exc)
        os.close(self._lock_fd)
        self._lock_fd = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.refresh is not None:
                await self.refresh()
            try:
                await self.publish_in_steps()
            except Exception as exc:
                self._publish_failed(exc)

    def _publish_or_log(self) -> None:
        try:
            self.publish()
        except Exception as exc:
            self._publish_failed(exc)

    def _publish_failed(self, exc: Exception) -> None:  # a full disk: the next interval tries again
        self.publish_failures += 1
        log.warning("metrics: snapshot not written to %s: %s: %s", self.path, type(exc).__name__, exc)

    def publish(self, *, force: bool = False) -> None:
        """Write the snapshot (temporary file + rename: a reader sees the old one or the new one, whole). Nothing
        changed since the last one: only its time is renewed, so readers know this worker is alive."""
        for _ in self._publish_steps(force=force):
            pass

    async def publish_in_steps(self) -> None:
        """:meth:`publish` as the periodic publisher runs it: the event loop runs between the steps."""
        for _ in self._publish_steps(force=False):
            await asyncio.sleep(0)  # deliberate: requests run between the snapshot's steps

    def _publish_steps(self, *, force: bool) -> Generator[None, None, None]:
        """:meth:`publish` in steps (the gauges, then :meth:`~sluicegate.metrics.RequestMetrics.snapshot_steps`);
        the periodic publisher lets the event loop run between them, so 10,000 budgeted teams never hold it for
        the whole snapshot at once. The file is written in the last step, whole."""
        gauges = self.metrics.gauges()
        state = (self.metrics.observations, gauges)
        path = self.path
        if not force and state == self._published:
            os.utime(path)
            return
        yield
        written = time.time()
        snapshot = yield from self.metrics.snapshot_steps(gauges, written, self.carried)
        replace_file(path, snapshot)
        self._published = state
        self.publishes += 1

    def others(self) -> list[Snapshot]:
        """The other slots' snapshots (dead workers' included: their counts stay), each decoded again only when
        its file changed; ``written`` is the file's time (renewed by an idle worker)."""
        found = []
        for number in _slot_numbers(self.base):
            if number == self.slot:
                continue
            path = self.base / f"m{number}.snap"
            try:
                stat = os.stat(path)
                identity = (stat.st_ino, stat.st_size)
                cached = self._read.get(number)
                if cached is not None and cached[0] == identity:
                    snapshot = cached[1]
                else:
                    snapshot = self.metrics.decode(path.read_bytes())
                    self._read[number] = (identity, snapshot)
            except FileNotFoundError:
                self._read.pop(number, None)
                continue
            except Exception as exc:  # torn by a foreign writer: skipped for this scrape
                log.warning("metrics: skipping unreadable snapshot %s: %s: %s", path, type(exc).__name__, exc)
                continue
            snapshot.written = stat.st_mtime
            found.append(snapshot)
        if self.carried is not None:
            found.append(self.carried)
        return found

    def render(self) -> list[str]:
        """The scrape: this worker's live series and gauges, with every other worker's last snapshot."""
        if self.slot is None:  # not publishing (see start): reading the others' would count them but not us
            return self.metrics.render()
        return self.metrics.render(self.others(), now=time.time(), fresh_for=self.fresh_for)
