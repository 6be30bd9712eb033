"""Waiting on a condition with a deadline (never a bare sleep as synchronisation)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

__all__ = ("wait_until", "wait_until_async")


def wait_until(condition: Callable[[], Any], *, timeout: float, interval: float = 0.02,
               what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy (and return that), or raise ``AssertionError``
    naming ``what`` and the last value once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)  # deliberate: the poll interval of a deadline-bounded wait


async def wait_until_async(condition: Callable[[], Any], *, timeout: float, interval: float = 0.02,
                           what: str = "condition") -> Any:
    """:func:`wait_until` for code on an event loop: the loop keeps running (the gateway under test shares it).
    ``condition`` may also be a coroutine function (awaited each time)."""
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)  # deliberate: the poll interval of a deadline-bounded wait
