"""Sink instances: one per distinct (sink, vars), shared across keys, evicted when idle, rebuilt on demand."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import weakref
from typing import TYPE_CHECKING

import msgspec
import pytest

from sluicegate.config import DeliverySettings
from sluicegate.routing import CallbackSet, Route
from sluicegate.sinks.base import CallbackVars, Sink
from sluicegate.sinks.dispatcher import Dispatcher
from sluicegate.sinks.spool import Spool
from sluicegate.testing import make_event

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sluicegate.events import LogEvent

pytestmark = pytest.mark.usefixtures("acme", "clean_env")


async def test_keys_with_identical_vars_share_one_instance(receiver, make_config, start, vars_for):
    async with start(make_config()) as gw:
        keys = [await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("same")}]})
                for _ in range(5)]
        other = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("else")}]})
        for key in [*keys, other]:
            assert (await gw.chat(key)).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/")) == 6)
        stats = (await gw.admin("GET", "/-/sinks")).json()
        assert stats["instances"] == 2
        assert sorted(s["sent"] for s in stats["sinks"]) == [1, 5]


async def test_idle_instances_are_closed_and_rebuilt_on_the_next_event(receiver, make_config, start, vars_for):
    async with start(make_config(delivery={"idle_seconds": 3600})) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("idle")}]})
        assert (await gw.chat(key, "first")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/idle")) == 1)
        dispatcher = gw.gateway.dispatcher
        await dispatcher.drain(5)
        slot = next(iter(dispatcher.pool.slots.values()))
        assert await dispatcher.evict_idle() == 0  # negative control: not idle long enough
        slot.last_used -= 7200
        assert await dispatcher.evict_idle() == 1
        assert slot.closed and dispatcher.pool.slots == {}
        assert (await gw.chat(key, "second")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/idle")) == 2)
        assert len(dispatcher.pool.slots) == 1 and next(iter(dispatcher.pool.slots.values())) is not slot


async def test_instances_over_the_bound_are_evicted_least_recently_used_first(receiver, make_config, start,
                                                                              vars_for):
    async with start(make_config(delivery={"max_instances": 3})) as gw:
        keys = [await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for(f"d{i}")}]})
                for i in range(5)]
        for key in keys:
            assert (await gw.chat(key)).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/")) == 5)
        await gw.gateway.dispatcher.drain(5)
        assert await gw.gateway.dispatcher.evict_idle() == 2
        assert len(gw.gateway.dispatcher.pool.slots) == 3


async def test_an_instance_holds_a_task_only_while_sending(receiver, make_config, start, vars_for):
    """A lingering batch waits in the shared deadline heap; an idle instance keeps no task or deadline (what
    20,000 instances cost at rest)."""
    async with start(make_config(delivery={"batch_interval": 30})) as gw:
        keys = [await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for(f"r{i}")}]})
                for i in range(3)]
        for key in keys:
            assert (await gw.chat(key)).status_code == 200
        dispatcher = gw.gateway.dispatcher
        slots = list(dispatcher.pool.slots.values())
        assert len(slots) == 3
        for slot in slots:  # lingering: a deadline and one queued event, no task
            assert slot.due > 0 and slot.task is None and len(slot.queue) == 1 and slot.busy
        assert receiver.events("/dest/") == []
        assert await dispatcher.drain(5)
        assert len(receiver.events("/dest/")) == 3
        for slot in slots:
            assert slot.due == 0 and slot.task is None and slot.queue == [] and not slot.busy
        assert dispatcher._working == 0 and dispatcher._timer is None


class _Recording(Sink):
    callback_name = "recording"
    max_batch_size = 3

    def __init__(self, callback_vars: CallbackVars) -> None:
        super().__init__(callback_vars)
        self.batches: list[int] = []
        self.sent = asyncio.Event()

    async def send(self, batch: Sequence[LogEvent]) -> None:
        self.batches.append(len(batch))
        self.sent.set()


async def test_a_full_batch_is_sent_at_once_and_a_partial_one_waits_for_its_deadline():
    route = Route(callback_name="recording", instance_id="i1", sink_class=_Recording, callback_vars=CallbackVars(),
                  on_success=True, on_failure=True, redact=False)
    callbacks = CallbackSet(routes=(route,), source="global")
    dispatcher = Dispatcher(DeliverySettings(batch_interval=30, max_sends_per_second=0, spool=False))
    for _ in range(7):
        dispatcher.submit(make_event(), callbacks)
    slot = dispatcher.pool.slots["i1"]
    sink = slot.sink
    assert isinstance(sink, _Recording)
    while len(sink.batches) < 2:  # full batches go at once, long before the 30 s deadline
        await asyncio.wait_for(sink.sent.wait(), 5)
        sink.sent.clear()
    assert sink.batches == [3, 3] and len(slot.queue) == 1  # negative control: the partial batch lingers
    assert await dispatcher.drain(5)
    assert sink.batches == [3, 3, 1]
    assert slot.task is None and slot.queue == [] and not slot.busy
    await dispatcher.aclose()


@pytest.mark.parametrize(("sends_per_second", "expect_batched"), [(0.5, True), (0, False)],
                         ids=["adaptive-linger", "control-no-adaptive-linger"])
async def test_many_busy_destinations_are_sent_in_fuller_batches(receiver, make_config, start, vars_for,
                                                                 sends_per_second, expect_batched):
    """With a send budget, each destination lingers longer, so 20 destinations x 3 rounds make ~20 sends,
    not ~60 (every send costs the event loop a round trip; this is what keeps 1,000 teams affordable)."""
    cfg = make_config(delivery={"batch_interval": 0.01, "max_batch_interval": 5.0,
                                "max_sends_per_second": sends_per_second})
    async with start(cfg) as gw:
        keys = [await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for(f"b{i}")}]})
                for i in range(20)]
        for round_ in range(3):
            for key in keys:
                assert (await gw.chat(key, f"round {round_}")).status_code == 200
        # up to two lingers: the 20 sends come due within ~5 s, then start at the pace (4 a second here)
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/")) == 60, timeout=20)
        posts = len(receiver.received("/dest/"))
        if expect_batched:
            assert posts <= 25
        else:
            assert posts >= 40


@pytest.mark.parametrize(("events", "written_early"), [(300, True), (100, False)],
                         ids=["busy-spool-writes-early", "control-quiet-spool-waits-for-its-interval"])
async def test_a_busy_spool_is_written_before_its_interval(tmp_path, events, written_early):
    """Past a few hundred waiting events the spool is written at once (small writes stall the loop less than one
    big one); below that it waits for ``spool_flush_interval`` (60 s here, so only the early write can do it)."""
    from sluicegate.sinks.dispatcher import _EARLY_FLUSH_EVENTS

    route = Route(callback_name="recording", instance_id="i1", sink_class=_Recording, callback_vars=CallbackVars(),
                  on_success=True, on_failure=True, redact=False)
    callbacks = CallbackSet(routes=(route,), source="global")
    dispatcher = Dispatcher(DeliverySettings(batch_interval=30, max_sends_per_second=0, spool_flush_interval=60),
                            spool_dir=tmp_path)
    await dispatcher.start(lambda name: _Recording)
    try:
        assert (events >= _EARLY_FLUSH_EVENTS) is written_early
        for _ in range(events):
            dispatcher.submit(make_event(), callbacks)
        for _ in range(5):  # the early write is scheduled with call_soon: a few loop turns, no timer
            await asyncio.sleep(0)  # deliberate: loop turns, not time; the control must see nothing written
        unwritten = dispatcher.stats()[0]["spool_unwritten"]
        assert (unwritten == 0) is written_early, unwritten
    finally:
        await dispatcher.aclose(grace=5)



class _Timed(Sink):
    """Records the loop time of every send, in a list shared by its instances (set per test)."""

    callback_name = "timed"
    max_batch_size = 100
    log: list[float] = []  # noqa: RUF012 - replaced by each test

    async def send(self, batch: Sequence[LogEvent]) -> None:
        _Timed.log.append(asyncio.get_running_loop().time())


@pytest.mark.parametrize(("settings", "paced"), [
    ({"batch_interval": 0.3, "max_batch_interval": 0.5, "max_sends_per_second": 10}, True),
    ({"batch_interval": 0.5, "max_batch_interval": 0.5, "max_sends_per_second": 10}, False),
], ids=["paced", "control-no-adaptive-linger-no-pace"])
async def test_batches_coming_due_together_start_at_the_pace_not_all_at_once(settings, paced):
    """40 destinations that begin lingering in the same instant come due together. With a send budget they start
    at its pace (here ``max(10, 40 busy / 0.5 s)`` = 80 a second: ~0.45 s for the 37 that come due last), not
    back to back: thousands of teams after a restart would otherwise encode and POST in one wave on the loop that
    serves requests, every linger cycle. Every event is still delivered."""
    _Timed.log = []
    callbacks = [CallbackSet(routes=(Route(callback_name="timed", instance_id=f"t{i}", sink_class=_Timed,
                                           callback_vars=CallbackVars(), on_success=True, on_failure=True,
                                           redact=False),), source="global") for i in range(40)]
    dispatcher = Dispatcher(DeliverySettings(spool=False, **settings))
    try:
        for callback_set in callbacks:
            dispatcher.submit(make_event(), callback_set)
        deadline = asyncio.get_running_loop().time() + 10
        # until every send has returned to the dispatcher, not only started: a send records its time before the
        # dispatcher counts it as sent, and a poll can land between the two
        while len(_Timed.log) < 40 or sum(slot.sent for slot in dispatcher.pool.slots.values()) < 40:
            assert asyncio.get_running_loop().time() < deadline, f"only {len(_Timed.log)} of 40 sends in 10 s"
            await asyncio.sleep(0.01)  # deliberate: the poll interval of a deadline-bounded wait
        last = sorted(_Timed.log)[3:]  # the first few came due early (the linger ramps up with the busy count)
        spread = last[-1] - last[0]
        if paced:
            assert spread >= 0.3, spread
        else:
            assert spread < 0.1, spread
        assert sum(slot.sent for slot in dispatcher.pool.slots.values()) == 40
    finally:
        await dispatcher.aclose()


class _Collected(Sink):
    """Records every batch it is sent (event ids), in a dict shared by its instances (set per test)."""

    callback_name = "collected"
    max_batch_size = 100
    batches: dict[str, list[list[str]]] = {}  # noqa: RUF012 - replaced by each test

    async def send(self, batch: Sequence[LogEvent]) -> None:
        _Collected.batches.setdefault(batch[0].trace_id.split("/")[0], []).append([e.trace_id for e in batch])


@pytest.mark.parametrize("limit", [10, 0], ids=["bounded", "control-no-limit"])
async def test_events_past_the_memory_budget_wait_in_the_spool_and_still_go_in_order_and_in_batches(tmp_path,
                                                                                                    limit):
    """20 destinations x 5 events with ``memory_events: 10``: at most 10 wait in memory, the other 90 only in the
    spool (what keeps 10,000 lingering teams from holding ~100 MB); when the lingers end every destination still
    gets its 5 events in order, in one batch (spilled events count towards the batch and linger with it), and
    the count of events in memory goes back to 0."""
    _Collected.batches = {}
    callbacks = [CallbackSet(routes=(Route(callback_name="collected", instance_id=f"d{i}", sink_class=_Collected,
                                           callback_vars=CallbackVars(), on_success=True, on_failure=True,
                                           redact=False),), source="global") for i in range(20)]
    dispatcher = Dispatcher(DeliverySettings(batch_interval=1.0, max_sends_per_second=0, memory_events=limit,
                                             spool_flush_interval=60), spool_dir=tmp_path)
    await dispatcher.start(lambda name: _Collected)
    try:
        for n in range(5):
            for i, callback_set in enumerate(callbacks):
                dispatcher.submit(make_event(trace_id=f"d{i}/{n}"), callback_set)
        in_memory = sum(len(slot.queue) for slot in dispatcher.pool.slots.values())
        spilled = sum(slot.spilled for slot in dispatcher.pool.slots.values())
        if limit:
            assert in_memory == dispatcher._in_memory == 10 and spilled == 90
        else:
            assert in_memory == dispatcher._in_memory == 100 and spilled == 0
        # every destination lingers (a deadline, no send task), spilled or not
        assert all(slot.due > 0 and slot.task is None for slot in dispatcher.pool.slots.values())
        deadline = asyncio.get_running_loop().time() + 10
        while len(_Collected.batches) < 20 or any(slot.busy for slot in dispatcher.pool.slots.values()):
            assert asyncio.get_running_loop().time() < deadline, f"{len(_Collected.batches)} of 20 sent in 10 s"
            await asyncio.sleep(0.01)  # deliberate: the poll interval of a deadline-bounded wait
        assert _Collected.batches == {f"d{i}": [[f"d{i}/{n}" for n in range(5)]] for i in range(20)}
        assert dispatcher._in_memory == 0
    finally:
        await dispatcher.aclose(grace=5)


class _Ballast:
    """Stands for what a failed attempt's frames hold (the encoded body, the connection attempt)."""


class _Failing(Sink):
    """Fails every send with a big local in its frame; keeps a weak reference to each one."""

    callback_name = "failing"
    held: list[weakref.ref[_Ballast]] = []  # noqa: RUF012 - replaced by each test

    async def send(self, batch: Sequence[LogEvent]) -> None:
        ballast = _Ballast()
        _Failing.held.append(weakref.ref(ballast))
        raise ConnectionError(f"down ({len(batch)} events, {ballast!r})")


async def test_a_failing_sink_retrying_does_not_keep_its_failed_attempt_alive():
    """While a slot backs off between retries it keeps the error's text, not the exception: the exception's
    traceback holds every frame of the failed attempt (the encoded body, the connection attempt): ~50 KB a slot,
    ~1 GB for 20,000 sink instances of teams whose destination is down."""
    _Failing.held = []
    route = Route(callback_name="failing", instance_id="f1", sink_class=_Failing, callback_vars=CallbackVars(),
                  on_success=True, on_failure=True, redact=False)
    dispatcher = Dispatcher(DeliverySettings(spool=False, batch_interval=0, retry_base_delay=60, retry_max_delay=60))
    try:
        dispatcher.submit(make_event(), CallbackSet(routes=(route,), source="global"))
        deadline = asyncio.get_running_loop().time() + 10
        slot = next(iter(dispatcher.pool.slots.values()))
        while slot.failed_sends < 1:
            assert asyncio.get_running_loop().time() < deadline, "the send never failed"
            await asyncio.sleep(0.01)  # deliberate: the poll interval of a deadline-bounded wait
        assert slot.task is not None and not slot.task.done()  # backing off before its retry
        assert "down (1 events" in slot.last_error
        gc.collect()
        assert len(_Failing.held) == 1 and _Failing.held[0]() is None
    finally:
        await dispatcher.aclose(grace=0.1)


class _Blocking(Sink):
    """Holds every send until the test releases it."""

    callback_name = "blocking"
    release: asyncio.Event | None = None

    async def send(self, batch: Sequence[LogEvent]) -> None:
        assert _Blocking.release is not None
        await _Blocking.release.wait()


async def test_a_send_waiting_for_a_send_slot_leaves_its_events_in_the_queue():
    """With every send slot taken (``max_concurrent_sends: 1``, one destination stuck), a second destination's due
    send waits without taking its batch: its events stay counted in its queue (where ``memory_events`` bounds
    them), and go out once a slot frees."""
    _Blocking.release = asyncio.Event()
    routes = [Route(callback_name="blocking", instance_id=f"b{i}", sink_class=_Blocking, callback_vars=CallbackVars(),
                    on_success=True, on_failure=True, redact=False) for i in range(2)]
    dispatcher = Dispatcher(DeliverySettings(spool=False, batch_interval=0, max_concurrent_sends=1))
    try:
        dispatcher.submit(make_event(), CallbackSet(routes=(routes[0],), source="global"))
        stuck = dispatcher.pool.slots["b0"]
        deadline = asyncio.get_running_loop().time() + 10
        while stuck.inflight != 1:
            assert asyncio.get_running_loop().time() < deadline, "the first send never started"
            await asyncio.sleep(0.01)  # deliberate: the poll interval of a deadline-bounded wait
        for _ in range(3):
            dispatcher.submit(make_event(), CallbackSet(routes=(routes[1],), source="global"))
        waiting = dispatcher.pool.slots["b1"]
        for _ in range(5):
            await asyncio.sleep(0)  # deliberate: loop turns, so the second send task runs up to its wait
        assert waiting.task is not None and not waiting.task.done()
        assert waiting.inflight == 0 and len(waiting.queue) == 3 and dispatcher._in_memory == 3
        _Blocking.release.set()
        assert await dispatcher.drain(10)
        assert waiting.sent == 3 and stuck.sent == 1 and dispatcher._in_memory == 0
    finally:
        _Blocking.release.set()
        await dispatcher.aclose(grace=1)


class _CollectedInOne(_Collected):
    max_batch_size = 5000


async def test_lingering_events_wait_encoded_not_as_object_trees():
    """2,000 events lingering for two destinations each hold about what the events themselves would (their JSON,
    shared by both queues) and nothing the garbage collector walks; each destination still gets every event,
    decoded, when its batch goes out."""
    _Collected.batches = {}
    routes = tuple(Route(callback_name="collected", instance_id=f"d{i}", sink_class=_CollectedInOne,
                         callback_vars=CallbackVars(), on_success=True, on_failure=True, redact=False)
                   for i in range(2))
    callbacks = CallbackSet(routes=routes, source="global")
    dispatcher = Dispatcher(DeliverySettings(batch_interval=30, max_sends_per_second=0, spool=False))
    dispatcher.submit(make_event(trace_id="all/warm"), callbacks)  # the instances exist before measuring
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        as_objects = [make_event(trace_id=f"all/{n}") for n in range(2000)]
        objects_bytes = tracemalloc.get_traced_memory()[0] - before
        del as_objects
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        tracked = len(gc.get_objects())
        for n in range(2000):  # each event built and handed over, as a request does
            dispatcher.submit(make_event(trace_id=f"all/{n}"), callbacks)
        waiting_bytes = tracemalloc.get_traced_memory()[0] - before
        gc.collect()  # a collection untracks tuples of untracked items: the queue entries drop out of its walk
        assert len(gc.get_objects()) - tracked < 100  # not one tracked object per event
    finally:
        tracemalloc.stop()
    # One JSON copy shared by both queues, not one object tree per queue. Since the attribution fields (13 metadata
    # keys, null when unused, written as nulls like LiteLLM's payload) the JSON of this event is about the size of
    # its object tree (it was ~60 %); holding the events twice as objects would be ~2x.
    assert waiting_bytes < 1.1 * objects_bytes, (waiting_bytes, objects_bytes)
    assert all(len(slot.queue) == 2001 for slot in dispatcher.pool.slots.values())
    assert await dispatcher.drain(10)
    assert _Collected.batches == {"all": [["all/warm", *(f"all/{n}" for n in range(2000))]] * 2}
    await dispatcher.aclose()


async def test_a_spooled_event_that_does_not_decode_is_dropped_and_counted_and_the_rest_go(tmp_path, caplog):
    """A damaged record in the spool (valid frame, payload no longer an event) is dropped when its batch goes out:
    counted in the instance's ``dropped``, logged with its seq; the events around it are delivered in order."""
    spool = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=1 << 22, fsync=False)
    spool.acquire()
    header = msgspec.json.encode({"callback_name": "collected", "callback_vars": {}})
    instance_log = spool.log_for("d0", header)
    instance_log.add(msgspec.json.encode(make_event(trace_id="d0/1")))
    instance_log.add(b'{"trace_id": "d0/2", "no": "id"}')
    instance_log.add(msgspec.json.encode(make_event(trace_id="d0/3")))
    spool.flush()
    spool._close_current()
    spool.release()  # what a crash leaves

    _Collected.batches = {}
    dispatcher = Dispatcher(DeliverySettings(batch_interval=0.05, max_sends_per_second=0), spool_dir=tmp_path)
    await dispatcher.start(lambda name: _Collected)
    try:
        slot = dispatcher.pool.slots["d0"]
        deadline = asyncio.get_running_loop().time() + 10
        while slot.busy or not _Collected.batches:
            assert asyncio.get_running_loop().time() < deadline, "the replay did not finish in 10 s"
            await asyncio.sleep(0.01)  # deliberate: the poll interval of a deadline-bounded wait
        assert _Collected.batches == {"d0": [["d0/1", "d0/3"]]}
        assert slot.dropped == 1 and slot.sent == 2
        assert "dropped event 2: it does not decode" in caplog.text
    finally:
        await dispatcher.aclose(grace=5)


class _Kept(Sink):
    """Keeps the event objects each instance is sent (set per test)."""

    callback_name = "kept"
    max_batch_size = 100
    received: dict[int, list[LogEvent]] = {}  # noqa: RUF012 - by id(instance); replaced by each test

    async def send(self, batch: Sequence[LogEvent]) -> None:
        _Kept.received.setdefault(id(self), []).extend(batch)


async def test_an_event_for_several_destinations_is_decoded_once_and_a_redacted_copy_apart(tmp_path):
    """Three routes of one request lingering together: the two that log messages get the very same decoded object
    (one decode for both); the route that redacts gets its own, redacted; every decoded event is let go once
    many later ones were decoded (the cache is bounded)."""
    _Kept.received = {}
    routes = tuple(Route(callback_name="kept", instance_id=name, sink_class=_Kept, callback_vars=CallbackVars(),
                         on_success=True, on_failure=True, redact=redact)
                   for name, redact in (("plain-1", False), ("plain-2", False), ("redacted", True)))
    callbacks = CallbackSet(routes=routes, source="global")
    dispatcher = Dispatcher(DeliverySettings(batch_interval=0.2, max_sends_per_second=0), spool_dir=tmp_path)
    await dispatcher.start(lambda name: _Kept)
    try:
        for n in range(5):
            dispatcher.submit(make_event(trace_id=f"t/{n}"), callbacks)
        assert await dispatcher.drain(10)
        by_instance = {iid: _Kept.received[id(slot.sink)] for iid, slot in dispatcher.pool.slots.items()}
        plain_1, plain_2, redacted = by_instance["plain-1"], by_instance["plain-2"], by_instance["redacted"]
        assert [e.trace_id for e in plain_1] == [e.trace_id for e in redacted] == [f"t/{n}" for n in range(5)]
        assert all(a is b for a, b in zip(plain_1, plain_2, strict=True))
        assert not any(a is b for a, b in zip(plain_1, redacted, strict=True))
        assert plain_1[0].messages != redacted[0].messages  # negative control: redaction still applies
        retained = len(dispatcher._recent) + len(dispatcher._recent_older)
        assert 0 < retained <= 10
        for n in range(3000):
            dispatcher.submit(make_event(trace_id=f"u/{n}"), CallbackSet(routes=routes[:1], source="global"))
        assert await dispatcher.drain(30)
        assert len(dispatcher._recent) + len(dispatcher._recent_older) <= 2 * 1024
    finally:
        await dispatcher.aclose(grace=5)
