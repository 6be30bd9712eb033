"""The delivery process's work: tail every serving worker's log, deliver through one set of sink instances, record
progress durably, answer the status socket, follow configuration changes.

Events read from the workers' logs go into the same :class:`~sluicegate.sinks.dispatcher.Dispatcher` an inline
gateway uses (its sink instances, batches, retries, redaction and spool), with the routes the worker resolved when it
accepted the request: the delivery process never re-resolves an event, so a team disabled before its request was
accepted has no route in the log to deliver to, and a request accepted before a change keeps the routes it had.

Progress: every ``spool_flush_interval`` the dispatcher's spool is written and then the position reached in each
worker's log is recorded (``<spool_dir>/delivery.progress``, replaced atomically). What was read is therefore on
disk twice for a moment (worker log, then spool) and never nowhere: a SIGKILL of the delivery process loses nothing
accepted; at restart it replays its spool and reads on from the recorded positions (an event read after the last
record is read again: at least once, as the spool always was). Worker segments behind every recorded position are
deleted then.

Changes: the process polls the database change counter as the workers do; after a change, a sink instance that no
route leads to any more (its team disabled, its callback deleted) is flushed and closed. A reload of config.yaml
(SIGHUP, which ``serve`` passes on to this process too, or a worker's ``POST /config/reload``, which asks it over
the status socket) re-reads the file's callbacks and team settings for that decision; delivery settings (spool,
batches) need a restart, as in the workers. Events carry their routes either way: what a reload changes here is
only which idle instances are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from sluicegate.aio import cancel_and_wait
from sluicegate.db.store import Store
from sluicegate.delivery.status import LOCK_FILE, PROGRESS_FILE, status_address
from sluicegate.delivery.worker_log import LogTail, segment_name, segment_numbers, worker_dirs
from sluicegate.files import replace_file
from sluicegate.plugins import get_plugin_manager
from sluicegate.routing import LoggingResolver, Route
from sluicegate.sinks.dispatcher import Dispatcher, spool_base_for
from sluicegate.sinks.registry import SinkRegistry
from sluicegate.sinks.vars import decode_vars

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sluicegate.config import Settings

__all__ = ("DeliveryService",)

log = logging.getLogger("sluicegate.delivery")

_READ_BATCH = 2000
"""Events read from one worker's log per turn: a turn then takes a few ms, and the loop answers status and sends
in between."""
_RETIRE_INTERVAL = 2.0
"""Seconds between two looks for sink instances no route leads to any more (each resolves every key)."""
_SCAN_INTERVAL = 0.5
"""Seconds between looks for new worker log directories."""


class DeliveryService:
    """One per host (per spool directory): holds ``delivery.lock`` while it runs."""

    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None,
                 poll_interval: float = 0.05, allow_unknown_keys: bool = False) -> None:
        self.settings = settings
        self.pm = get_plugin_manager(environ)
        self.registry = SinkRegistry.from_plugin_manager(self.pm)
        self.resolver = LoggingResolver(settings, self.registry, self.pm)
        self.store = Store.for_settings(settings, environ)
        delivery = settings.sluicegate_settings.delivery
        self.base = Path(spool_base_for(settings))
        self.dispatcher = Dispatcher(delivery, spool_dir=self.base if delivery.spool else None)
        self.dispatcher.pool.api_policy = self.resolver.api_policy
        self.address = status_address(self.base)
        self.poll_interval = poll_interval
        self.tails: dict[str, LogTail] = {}
        self.started_at = 0.0
        self.restarts = int(os.environ.get("SLUICEGATE_DELIVERY_RESTARTS") or 0)
        self.retired = 0
        self.allow_unknown_keys = allow_unknown_keys
        self._routes: dict[tuple[str, bool], Route] = {}
        self._positions: dict[str, list[int]] = {}
        self._lock_fd: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tailer: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._version = -1
        self._dirty = False
        self._persisted_at = 0.0
        self._scanned_at = -_SCAN_INTERVAL

    # lifecycle -------------------------------------------------------------------------------------------
    async def start(self, lock_timeout: float = 60.0) -> None:
        """Take the host's delivery lock (waiting for a previous delivery process to finish its shutdown), replay
        the spool, read on from the recorded positions, open the status socket."""
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._acquire(lock_timeout)
        self._positions = self._load_progress()
        await self.dispatcher.start(self.registry.get, self.resolver.redaction.compile)
        try:
            self._version = await self.store.version()
        except Exception as exc:  # the workers wait for the database; delivery need not
            log.warning("delivery: change counter not readable yet: %s", type(exc).__name__)
        if not self.address.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)  # a dead predecessor's (we hold the lock)
        self._server = await asyncio.start_unix_server(self._answer, path=self.address)
        if not self.address.startswith("\0"):
            os.chmod(self.address, 0o600)
        self.started_at = time.time()
        loop = asyncio.get_running_loop()
        self._tailer = loop.create_task(self._tail_loop())
        self._watcher = loop.create_task(self._watch_changes())

    async def _acquire(self, timeout: float) -> None:
        fd = os.open(self.base / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RuntimeError(f"another delivery process holds {self.base / LOCK_FILE}") from None
                if not said:
                    log.warning("delivery: waiting for the previous delivery process to release %s", self.base)
                    said = True
                await asyncio.sleep(0.1)
        self._lock_fd = fd

    async def aclose(self) -> None:
        """Read what the workers wrote (they have stopped first), deliver within the grace period, keep the rest
        in the spool, record the positions."""
        for task in (self._tailer, self._watcher):
            if task is not None:
                await cancel_and_wait(task, "delivery task", grace=5.0)
        if self._server is not None:
            self._server.close()
        try:
            while self.pump():
                await asyncio.sleep(0)
        except OSError as exc:
            log.error("delivery: reading the worker logs at shutdown failed: %s", exc)
        await self.dispatcher.aclose()
        self._write_progress()
        for tail in self.tails.values():
            tail.close()
        await self.store.aclose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # tailing ---------------------------------------------------------------------------------------------
    async def _tail_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.sluicegate_settings.delivery.spool_flush_interval
        while True:
            try:
                busy = self.pump()
                if self._dirty and loop.time() - self._persisted_at >= interval:
                    self.persist()
            except OSError as exc:  # a full disk: keep going, the positions stay where they were recorded
                log.error("delivery: %s", exc)
                busy = False
            await asyncio.sleep(0 if busy else self.poll_interval)

    def pump(self) -> bool:
        """Read every worker's new events into the dispatcher; True when some log has more waiting."""
        now = time.monotonic()
        if now - self._scanned_at >= _SCAN_INTERVAL:
            self._scanned_at = now
            for directory in worker_dirs(self.base):
                if directory.name not in self.tails:
                    segment, offset = self._positions.get(directory.name, (0, 0))
                    self.tails[directory.name] = LogTail(directory, self._resolve, segment=segment, offset=offset)
        busy = False
        submit = self.dispatcher.submit_encoded
        for tail in self.tails.values():
            before = (tail.segment, tail.offset)
            events = tail.read(_READ_BATCH)
            for routes, payload in events:
                submit(payload, routes)
            if (tail.segment, tail.offset) != before:
                self._dirty = True
            if len(events) >= _READ_BATCH:
                busy = True
        return busy

    def _resolve(self, info: dict[str, Any]) -> Route | None:
        """The Route of a worker's route header, built once per (instance, redaction)."""
        key = (str(info.get("instance_id")), bool(info.get("redact")))
        route = self._routes.get(key)
        if route is not None:
            return route
        try:
            sink_class = self.registry.get(str(info["callback_name"]))
            callback_vars = decode_vars(sink_class.Vars, info.get("callback_vars") or {})
        except Exception as exc:  # plugin gone since the worker accepted it: said once per route, per segment
            log.error("delivery: cannot build sink %s/%s: %s; its events are skipped", info.get("callback_name"),
                      info.get("instance_id"), type(exc).__name__)
            return None
        policy = None
        if info.get("redaction") is not None:  # never delivered unredacted: a policy that cannot be built skips
            try:
                policy = self.resolver.redaction.compile(info["redaction"])
            except Exception as exc:
                log.error("delivery: cannot build the redaction policy of sink %s/%s: %s; its events are skipped",
                          info.get("callback_name"), info.get("instance_id"), type(exc).__name__)
                return None
        if len(self._routes) >= 2 * self.settings.sluicegate_settings.delivery.max_instances:
            self._routes.clear()
        route = self._routes[key] = Route(
            callback_name=sink_class.callback_name, instance_id=key[0], sink_class=sink_class,
            callback_vars=callback_vars, on_success=True, on_failure=True, redact=key[1],
            trusted=bool(info.get("trusted", True)), redaction=policy,
            redaction_source=info.get("redaction_source"))
        return route

    # progress --------------------------------------------------------------------------------------------
    def persist(self) -> None:
        """Write the spool, then record how far each worker's log was read; delete what is behind that."""
        if self.dispatcher.spool is not None:
            self.dispatcher.flush_spool()
        self._write_progress()
        for tail in self.tails.values():
            for number in segment_numbers(tail.directory):
                if number >= tail.segment:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tail.directory / segment_name(number))

    def _write_progress(self) -> None:
        positions = {name: [tail.segment, tail.offset] for name, tail in self.tails.items()}
        replace_file(self.base / PROGRESS_FILE, msgspec.json.encode(positions),
                     fsync=self.settings.sluicegate_settings.delivery.spool_fsync)
        self._positions = positions
        self._dirty = False
        self._persisted_at = asyncio.get_running_loop().time()

    def _load_progress(self) -> dict[str, list[int]]:
        try:
            data = msgspec.json.decode((self.base / PROGRESS_FILE).read_bytes(), type=dict[str, list[int]])
        except FileNotFoundError:
            return {}
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("delivery: %s is unreadable (%s): the worker logs are read from their oldest segment",
                      self.base / PROGRESS_FILE, exc)
            return {}
        return {name: position for name, position in data.items() if len(position) == 2}

    # configuration changes -------------------------------------------------------------------------------
    async def _watch_changes(self) -> None:
        gateway = self.settings.sluicegate_settings
        loop = asyncio.get_running_loop()
        changed = False
        checked_at = -_RETIRE_INTERVAL
        while True:
            await asyncio.sleep(gateway.change_poll_interval)
            try:
                version = await self.store.version()
            except Exception as exc:
                log.warning("delivery: change poll failed: %s", type(exc).__name__)
                continue
            if version != self._version:
                self._version = version
                changed = True
            # A scan resolves every key: at most one per _RETIRE_INTERVAL however many changes come (10,000 keys
            # made one by one are 10,000 changes)
            if not changed or loop.time() - checked_at < _RETIRE_INTERVAL or not self.dispatcher.pool.slots:
                continue
            changed = False
            checked_at = loop.time()
            try:
                await self.retire_unrouted()
            except Exception as exc:  # the database blipped mid-scan: the next change tries again
                log.warning("delivery: could not check for unrouted sinks: %s", type(exc).__name__)

    async def live_instances(self) -> set[str]:
        """Instance ids some route leads to now: the global and config team callbacks, and every key's."""
        resolver = self.resolver
        live = {route.instance_id for route in resolver.global_set.routes}
        for configured in resolver.team_config.values():
            if configured is not None:
                live.update(route.instance_id for route in configured.routes)
        teams = {team.team_id: team for team in await self.store.list_teams()}
        for key in await self.store.list_keys():
            team = teams.get(key.team_id) if key.team_id else None
            live.update(route.instance_id for route in resolver.for_key(key, team).routes)
        return live

    async def retire_unrouted(self) -> int:
        """Flush and close every sink instance no route leads to any more. Events the workers accepted before the
        change may still be on their way (one flush interval): those bring their instance back, to be closed at
        the next change or when idle."""
        live = await self.live_instances()
        gone = [instance_id for instance_id in self.dispatcher.pool.slots if instance_id not in live]
        if not gone:
            return 0
        closed = await self.dispatcher.retire(gone)
        self.retired += closed
        if closed:
            log.info("delivery: closed %d sink instance(s) no route leads to any more", closed)
        return closed

    # status ----------------------------------------------------------------------------------------------
    async def reload(self) -> list[str]:
        """Re-read config.yaml's callbacks and team settings (see the module's docstring), then close the instances
        no route leads to any more; the problems that kept the running configuration (empty: reloaded)."""
        from sluicegate.config import ConfigError, load_settings

        source = self.settings.source
        if not source:
            return ["the delivery process was not started from a config file: nothing to reload"]
        try:
            settings = await asyncio.to_thread(load_settings, source, allow_unknown_keys=self.allow_unknown_keys)
            resolver = LoggingResolver(settings, self.registry, self.pm)
        except ConfigError as exc:
            log.error("delivery: config reload refused, the running configuration stays: %s", "; ".join(exc.problems))
            return list(exc.problems)
        self.resolver = resolver
        self.dispatcher.pool.api_policy = resolver.api_policy
        log.info("delivery: config.yaml reloaded (callbacks and team settings)")
        try:
            await self.retire_unrouted()
        except Exception as exc:  # the database blipped: the next change tries again
            log.warning("delivery: could not check for unrouted sinks: %s", type(exc).__name__)
        return []

    def unread_bytes(self) -> int:
        return sum(tail.unread_bytes() for tail in self.tails.values())

    def ping(self) -> dict[str, Any]:
        return {"healthy": True, "pid": os.getpid(), "started_at": self.started_at,
                "uptime": round(time.time() - self.started_at, 3), "restarts": self.restarts,
                "instances": len(self.dispatcher.pool.slots), "workers": len(self.tails)}

    def stats(self) -> dict[str, Any]:
        dispatcher = self.dispatcher
        sinks = dispatcher.stats()
        unread = self.unread_bytes()
        return {"sinks": sinks, "submitted": dispatcher.submitted,
                "pending": dispatcher.pending() + (1 if unread else 0), "instances": len(sinks),
                "redaction_runs": dispatcher.redaction_memo.applied,
                "delivery": {**self.ping(), "unread_bytes": unread, "retired": self.retired,
                             "logs": {name: {"segment": tail.segment, "offset": tail.offset,
                                             "events_read": tail.events_read, "torn_bytes": tail.torn_bytes}
                                      for name, tail in self.tails.items()}}}

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            command = line.strip().decode(errors="replace")
            if command == "reload":
                problems = await self.reload()
                body = {"reloaded": not problems, "problems": problems}
            else:
                body = self.stats() if command == "stats" else self.ping()
            writer.write(msgspec.json.encode(body))
            await writer.drain()
        except (OSError, TimeoutError) as exc:
            log.debug("delivery status: %s", exc)
        finally:
            writer.close()
