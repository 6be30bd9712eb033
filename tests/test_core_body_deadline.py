"""The body deadline middleware (``sluicegate.app.body_deadline``) around small ASGI apps, on this test's loop.

What it must do: a body still arriving at the deadline is refused with 408 (whether the app is waiting in
``receive()`` then or asks for more later), and nothing else is touched: an app that read its whole body in time,
or never reads one, may take as long as it likes afterwards. (The end-to-end case, a real client dribbling its
body over a socket, is in ``tests/pipeline/test_fuzz.py``.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from litestar.exceptions import HTTPException
from sluicegate.app import body_deadline

SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/"}
DEADLINE = 0.2


async def _send(message: Any) -> None:
    return None


def _receiver(parts: list[dict[str, Any]]) -> Any:
    """``receive()`` that hands out ``parts`` and then blocks for ever (a client that stopped sending)."""
    queue = list(parts)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


async def _run(app: Any, receive: Any) -> Any:
    return await asyncio.wait_for(body_deadline(DEADLINE)(app)(SCOPE, receive, _send), 5)


async def test_a_body_still_arriving_at_the_deadline_is_refused_with_408() -> None:
    started = asyncio.get_running_loop().time()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    with pytest.raises(HTTPException) as caught:
        await _run(app, _receiver([{"type": "http.request", "body": b"{", "more_body": True}]))
    assert caught.value.status_code == 408
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_asking_for_more_body_after_the_deadline_is_refused_with_408() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["more_body"]
        await asyncio.sleep(DEADLINE * 2)  # deliberate: the app dawdles past the deadline between two reads
        await receive()

    with pytest.raises(HTTPException) as caught:
        await _run(app, _receiver([{"type": "http.request", "body": b"{", "more_body": True},
                                   {"type": "http.request", "body": b"}", "more_body": False}]))
    assert caught.value.status_code == 408


async def test_an_app_that_read_its_body_in_time_or_never_reads_one_is_not_cut_off() -> None:
    finished: list[str] = []

    async def reads_then_works(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["body"] == b"{}"
        await asyncio.sleep(DEADLINE * 2)  # deliberate: work that outlasts the body deadline
        finished.append("read")

    async def never_reads(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(DEADLINE * 2)  # deliberate: work that outlasts the body deadline
        finished.append("never")

    await _run(reads_then_works, _receiver([{"type": "http.request", "body": b"{}", "more_body": False}]))
    await _run(never_reads, _receiver([]))
    assert finished == ["read", "never"]


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    """The server cancelling the request (a client gone) is not turned into a 408."""
    waiting = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        waiting.set()
        await receive()

    task = asyncio.ensure_future(_run(app, _receiver([])))
    await asyncio.wait_for(waiting.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
