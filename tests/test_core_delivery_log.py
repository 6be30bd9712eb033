"""A serving worker's log on a real directory: what the worker appends is what the delivery process reads (routes
named once per segment, events with their routes), across segments, from a recorded position, past a record torn
by a kill; the status socket, including its abstract-address fallback for long paths."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from sluicegate.config import DeliverySettings
from sluicegate.delivery.status import query, status_address
from sluicegate.delivery.worker_log import LogTail, WorkerLog, segment_name, segment_numbers
from sluicegate.events import LogEvent
from sluicegate.routing import CallbackSet, Route
from sluicegate.sinks.base import CallbackVars, Sink


class EchoVars(CallbackVars, frozen=True):
    url: str


class EchoSink(Sink):
    """A sink class for building routes; nothing is sent through it here."""

    callback_name = "echo"
    Vars = EchoVars

    async def send(self, batch: Any) -> None:  # pragma: no cover - never called
        raise AssertionError("not sent in these tests")


def route(name: str, *, redact: bool = False, on_failure: bool = True) -> Route:
    return Route(callback_name="echo", instance_id=f"id-{name}", sink_class=EchoSink,
                 callback_vars=EchoVars(url=f"http://x/{name}"), on_success=True, on_failure=on_failure,
                 redact=redact)


def event(text: str, status: str = "success") -> LogEvent:
    return LogEvent(id=text, trace_id=text, status=status, messages=[{"role": "user", "content": text}])


def resolver(seen: list[dict[str, Any]]):
    def resolve(info: dict[str, Any]) -> Route:
        seen.append(info)
        return route(info["instance_id"][3:], redact=info["redact"])
    return resolve


def read_all(tail: LogTail) -> list[tuple[list[str], str]]:
    found = tail.read(10_000)
    return [([r.instance_id for r in routes], msgspec.json.decode(payload, type=LogEvent).messages[0]["content"])
            for routes, payload in found]


async def writer(base: Path, **settings: Any) -> WorkerLog:
    worker = WorkerLog(DeliverySettings(spool_flush_interval=10, **settings), base)
    await worker.start()
    return worker


async def test_events_come_back_with_their_routes_each_route_named_once_per_segment(tmp_path):
    worker = await writer(tmp_path)
    both = CallbackSet(routes=(route("a"), route("b", on_failure=False)), source="team")
    for i in range(5):
        assert worker.submit(event(f"s{i}"), both) == 2
    assert worker.submit(event("f0", status="failure"), both) == 1  # b takes successes only
    assert worker.submit(event("none"), CallbackSet(routes=(), source="team")) == 0  # disabled: nothing written
    assert worker.pending() == 6 and worker.flush_spool() == 6
    seen: list[dict[str, Any]] = []
    tail = LogTail(worker.root, resolver(seen))
    assert read_all(tail) == [(["id-a", "id-b"], f"s{i}") for i in range(5)] + [(["id-a"], "f0")]
    assert [info["instance_id"] for info in seen] == ["id-a", "id-b"]  # one header per route in the segment
    assert seen[0]["callback_vars"] == {"url": "http://x/a"} and seen[0]["trusted"] is True
    assert read_all(tail) == []  # negative control: nothing read twice
    await worker.aclose()


async def test_an_event_only_for_redacting_routes_is_written_redacted(tmp_path):
    worker = await writer(tmp_path)
    worker.submit(event("secret prompt"), CallbackSet(routes=(route("r", redact=True),), source="team"))
    worker.submit(event("kept prompt"), CallbackSet(routes=(route("r", redact=True), route("p")), source="team"))
    worker.flush_spool()
    data = b"".join((worker.root / segment_name(n)).read_bytes() for n in segment_numbers(worker.root))
    assert b'"content":"secret prompt"' not in data
    assert b'"content":"kept prompt"' in data  # a plain route needs it: the delivery process redacts for the other one
    await worker.aclose()


async def test_reading_goes_on_across_segments_and_resumes_from_a_recorded_position(tmp_path):
    worker = await writer(tmp_path, spool_segment_bytes=2048)
    callbacks = CallbackSet(routes=(route("a"),), source="team")
    for i in range(60):
        worker.submit(event(f"e{i}-" + "x" * 100), callbacks)
        if i % 5 == 4:
            worker.flush_spool()
    assert len(segment_numbers(worker.root)) > 3
    tail = LogTail(worker.root, resolver([]))
    first = tail.read(25)
    position = (tail.segment, tail.offset)
    assert position[1] > 0  # mid-segment
    # a new reader from the recorded position (the delivery process after a restart) reads the rest, in order,
    # knowing the routes named before that position in the segment
    again = LogTail(worker.root, resolver([]), segment=position[0], offset=position[1])
    rest = read_all(again)
    assert [c.split("-")[0] for _, c in rest] == [f"e{i}" for i in range(25, 60)]
    assert all(ids == ["id-a"] for ids, _ in rest) and len(first) == 25
    await worker.aclose()


async def test_a_torn_record_is_skipped_once_the_slot_has_a_newer_segment_or_no_writer(tmp_path):
    worker = await writer(tmp_path)
    callbacks = CallbackSet(routes=(route("a"),), source="team")
    worker.submit(event("whole"), callbacks)
    worker.flush_spool()
    path = worker.root / segment_name(segment_numbers(worker.root)[-1])
    worker.submit(event("torn"), callbacks)
    worker.flush_spool()
    size = path.stat().st_size
    with open(path, "r+b") as handle:  # a SIGKILL in the middle of the write
        handle.truncate(size - 10)
    tail = LogTail(worker.root, resolver([]))
    assert read_all(tail) == [(["id-a"], "whole")]
    assert tail.torn_bytes == 0  # the writer holds the slot: the part record may still be completed
    await worker.aclose()  # the kill: the slot's lock is released
    assert read_all(tail) == [] and tail.torn_bytes > 0 and tail.unread_bytes() == 0
    # a new worker on the slot starts a new segment; reading goes on there
    again = await writer(tmp_path)
    assert again.root == worker.root and len(segment_numbers(again.root)) == 2
    again.submit(event("after"), callbacks)
    again.flush_spool()
    assert read_all(tail) == [(["id-a"], "after")]
    await again.aclose()


def test_status_socket_answers_on_a_path_and_on_an_abstract_address_for_long_paths(tmp_path):
    short = status_address(tmp_path)
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    long = status_address(deep)
    assert short.endswith("delivery.sock") and long.startswith("\0")  # sun_path holds 107 bytes

    async def serve_and_ask(address: str) -> tuple[Any, Any]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            command = (await reader.readline()).strip().decode()
            writer.write(msgspec.json.encode({"command": command, "pid": os.getpid()}))
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(answer, path=address)
        try:
            return await query(address, "ping"), await query(address + "-nobody", "ping", timeout=0.5)
        finally:
            server.close()

    for address in (short, long):
        found, nobody = uvloop.run(serve_and_ask(address))
        assert found == {"command": "ping", "pid": os.getpid()} and nobody is None
