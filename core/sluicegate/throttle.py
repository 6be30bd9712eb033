"""A per-caller sliding-window throttle for costly routes (``/key/health`` probes every sink of a key).

In-process and bounded: at most ``max_callers`` callers are tracked (least recently seen forgotten first), each
with at most ``limit`` timestamps. With ``--workers N`` each worker counts on its own.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque

from sluicegate.errors import ApiError

__all__ = ("Throttle",)


class Throttle:
    __slots__ = ("limit", "window", "max_callers", "_calls", "_clock")

    def __init__(self, limit: int, window: float = 60.0, *, max_callers: int = 10_000,
                 clock: object = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.max_callers = max_callers
        self._calls: OrderedDict[str, deque[float]] = OrderedDict()
        self._clock = clock

    def check(self, caller: str, what: str) -> None:
        """Count one call of ``caller``; raise a 429 ``ApiError`` (with ``Retry-After``) when over the limit."""
        if self.limit <= 0:
            return
        now = self._clock()  # type: ignore[operator]
        calls = self._calls.get(caller)
        if calls is None:
            calls = self._calls[caller] = deque(maxlen=self.limit)
            if len(self._calls) > self.max_callers:
                self._calls.popitem(last=False)
        else:
            self._calls.move_to_end(caller)
        while calls and now - calls[0] >= self.window:
            calls.popleft()
        if len(calls) >= self.limit:
            retry_after = max(1, math.ceil(self.window - (now - calls[0])))
            raise ApiError(429, f"{what}: at most {self.limit} calls per {self.window:g} s per key; retry in "
                           f"{retry_after} s", type="rate_limit_error", code="429",
                           headers={"Retry-After": str(retry_after)})
        calls.append(now)
