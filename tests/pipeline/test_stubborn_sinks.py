"""A sink that ignores cancellation (swallows ``CancelledError`` and carries on) cannot hang delivery, shutdown or
``/key/health``: its send times out on time and is retried, a shutdown ends within its grace, a health probe
answers within its timeout. With ``asyncio.wait_for`` (Python 3.11) each of these waited for the sink to give up
by itself; the sink here only gives up when the test releases it, at the very end."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, ClassVar

import pytest
from sluicegate.aio import abandoned_tasks, bounded, cancel_and_wait
from sluicegate.config import DeliverySettings
from sluicegate.routing import CallbackSet, Route
from sluicegate.sinks.base import CallbackVars, HealthResult, Sink
from sluicegate.sinks.dispatcher import Dispatcher
from sluicegate.testing import make_event

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sluicegate.events import LogEvent


async def _stubborn_wait(release: asyncio.Event) -> None:
    """Wait for ``release``, swallowing every cancellation on the way (what a badly written client does)."""
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue


class _Stubborn(Sink):
    callback_name = "stubborn"
    send_timeout = 0.2
    release: ClassVar[asyncio.Event]

    def __init__(self, callback_vars: CallbackVars) -> None:
        super().__init__(callback_vars)
        self.attempts = 0

    async def send(self, batch: Sequence[LogEvent]) -> None:
        self.attempts += 1
        await _stubborn_wait(self.release)

    async def health_check(self) -> HealthResult:
        await _stubborn_wait(self.release)
        return HealthResult(healthy=True)


@pytest.fixture
async def release():
    """The event that finally lets the stubborn code go: set at the end of each test, while its loop still runs
    (a task that swallows cancellation would otherwise hang the loop's own teardown)."""
    _Stubborn.release = asyncio.Event()
    yield _Stubborn.release
    _Stubborn.release.set()
    assert await _until(lambda: abandoned_tasks() == 0), "a released task did not finish"


async def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)  # deliberate: polls the condition, bounded by the deadline
    return True


async def test_bounded_returns_on_time_even_when_the_task_ignores_cancellation(release):
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="probe did not finish within 0.1s"):
        await bounded(_stubborn_wait(release), 0.1, "probe", grace=0.1)
    assert time.monotonic() - started < 5  # the stubborn task is still waiting: release has not been set
    assert not release.is_set()
    # control: a result passes through
    assert await bounded(asyncio.sleep(0, result="ok"), 1, "quick") == "ok"  # deliberate: the sleep is the work
    with pytest.raises(ZeroDivisionError):
        await bounded(asyncio.to_thread(lambda: 1 / 0), 1, "raises")  # and an error is the work's own


async def test_cancel_and_wait_reports_a_task_that_would_not_stop(release):
    stubborn = asyncio.get_running_loop().create_task(_stubborn_wait(release))
    await asyncio.sleep(0)  # deliberate: one loop turn, so the task is inside its wait before it is cancelled
    assert await cancel_and_wait(stubborn, "stubborn task", grace=0.05) is False
    assert not stubborn.done() and abandoned_tasks() == 1
    polite = asyncio.get_running_loop().create_task(asyncio.sleep(30))  # deliberate: the work being cancelled
    await asyncio.sleep(0)  # deliberate: one loop turn, as above
    assert await cancel_and_wait(polite, "polite task", grace=5) is True and polite.cancelled()


async def test_a_stubborn_sink_times_out_is_retried_and_does_not_hang_shutdown(release, tmp_path):
    route = Route(callback_name="stubborn", instance_id="s1", sink_class=_Stubborn, callback_vars=CallbackVars(),
                  on_success=True, on_failure=True, redact=False)
    callbacks = CallbackSet(routes=(route,), source="global")
    dispatcher = Dispatcher(DeliverySettings(batch_interval=0, retry_base_delay=0.01, retry_max_delay=0.02,
                                             max_retries=1000), spool_dir=tmp_path / "spool")
    await dispatcher.start(lambda name: _Stubborn)
    dispatcher.submit(make_event(), callbacks)
    slot = dispatcher.pool.slots["s1"]
    sink = slot.sink
    assert isinstance(sink, _Stubborn)
    # Each attempt times out after send_timeout (+ the grace given to the cancelled send) and the next one starts,
    # while every earlier send is still stuck in the sink.
    assert await _until(lambda: sink.attempts >= 3), f"attempts: {sink.attempts}, last error: {slot.last_error}"
    assert slot.failed_sends >= 2 and "timeout" in (slot.last_error or "")
    started = time.monotonic()
    await asyncio.wait_for(dispatcher.aclose(grace=0.2), 30)  # the safety net: aclose itself must return
    assert time.monotonic() - started < 15
    assert not release.is_set()  # the sink never gave up: the dispatcher did not wait for it
    assert dispatcher.spool is not None  # the undelivered event stays in the spool for the next start
