"""Awaiting code we do not control (sinks, health checks, plugin hooks) without letting it hang us.

``asyncio.wait_for`` (Python 3.11) cancels the awaited task on a timeout and then waits, without limit, for that task
to finish. A plugin that swallows the cancellation (a ``except BaseException`` around a network call, or a client
library that turns a cancellation into a retry) then holds up whatever awaited it, and a shutdown can hang for as
long as the plugin likes. :func:`bounded` gives such a task ``grace`` seconds after its cancellation and then leaves
it to finish on its own, logged once, so the caller always gets its answer within ``timeout + grace``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any

__all__ = ("CANCEL_GRACE", "abandoned_tasks", "bounded", "cancel_and_wait")

log = logging.getLogger("sluicegate.aio")

T = TypeVar("T")

CANCEL_GRACE = 1.0
"""Seconds a cancelled task gets to finish before it is left behind."""

_abandoned: set[asyncio.Task[Any]] = set()  # strong references to tasks left behind, until they finish


def abandoned_tasks() -> int:
    """Tasks given up on (cancelled, still running past their grace) that have not finished yet."""
    return len(_abandoned)


def _abandon(task: asyncio.Task[Any]) -> None:
    """Keep ``task`` referenced until it finishes, its outcome discarded."""
    _abandoned.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" noise for a task we gave up on


async def cancel_and_wait(task: asyncio.Task[Any], what: str, grace: float = CANCEL_GRACE) -> bool:
    """Cancel ``task`` and wait up to ``grace`` seconds for it to finish; True when it did.

    A task still running after that is left to finish on its own (kept referenced, its outcome discarded) and a
    warning names ``what``. Cancelling the caller meanwhile cancels the caller, as it should.
    """
    if task.done():
        _forget(task)
        return True
    task.cancel()
    await asyncio.wait((task,), timeout=grace)
    if task.done():
        _forget(task)
        return True
    log.warning("%s did not stop within %.1fs of being cancelled; left to finish on its own", what, grace)
    _abandon(task)
    return False


async def bounded(coro: Coroutine[Any, Any, T], timeout: float, what: str, grace: float = CANCEL_GRACE) -> T:
    """``await coro`` for at most ``timeout`` seconds, else ``TimeoutError``; never blocked by a task that ignores
    its cancellation (see the module's docstring). ``what`` names the awaited work in the warning."""
    task = asyncio.get_running_loop().create_task(coro)
    try:
        await asyncio.wait((task,), timeout=timeout)
    except asyncio.CancelledError:  # we are being cancelled: so is the work, without waiting for it
        task.cancel()
        _abandon(task)
        raise
    if task.done():
        if task.cancelled():  # cancelled from elsewhere (it was never ours to cancel): report, do not propagate
            raise TimeoutError(f"{what} was cancelled")
        return task.result()
    await cancel_and_wait(task, what, grace)
    raise TimeoutError(f"{what} did not finish within {timeout:g}s")
