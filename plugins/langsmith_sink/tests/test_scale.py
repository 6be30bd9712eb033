"""10,000 LangSmith projects in one process: threads flat, memory bounded and measured per instance."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import make_event
from sluicegate_langsmith_sink.sink import LangsmithSink

from .conftest import tenant_of

INSTANCES = 10_000
SENDERS = 500
MAX_BYTES_PER_INSTANCE = 3_000
MAX_EXTRA_RSS_MB = 40


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _rss_mb() -> float:
    gc.collect()
    return _status("VmRSS") / 1024


async def test_ten_thousand_instances_threads_flat_and_memory_bounded(langsmith_receiver, tenant) -> None:
    shared_vars = [tenant(project=f"p{n}") for n in range(10)]

    def build(n: int) -> LangsmithSink:
        return LangsmithSink(decode_vars(LangsmithSink.Vars, {**shared_vars[n % 10], "langsmith_project": f"team-{n}"}))

    warm = build(INSTANCES + 1)
    await warm.send([make_event()])
    threads_before, rss_before = _status("Threads"), _rss_mb()

    tracemalloc.start()
    first = tracemalloc.take_snapshot()
    sinks = [build(n) for n in range(INSTANCES)]
    built = tracemalloc.take_snapshot()
    per_instance = sum(s.size_diff for s in built.compare_to(first, "filename")) / INSTANCES
    tracemalloc.stop()

    for _ in range(2):
        await asyncio.gather(*(s.send([make_event(team_id=f"team-{n}")]) for n, s in enumerate(sinks[:SENDERS])))
    threads_after, rss_after = _status("Threads"), _rss_mb()
    print(f"\nlangsmith sink: {INSTANCES} instances, {per_instance:.0f} bytes each (tracemalloc, vars included); "
          f"{SENDERS} sending twice concurrently: threads {threads_before} -> {threads_after}, "
          f"RSS {rss_before:.1f} -> {rss_after:.1f} MB")
    stored = sum(len(langsmith_receiver.runs(tenant_of(langsmith_receiver, shared_vars[n % 10]), f"team-{n}"))
                 for n in range(SENDERS))
    assert stored == 2 * SENDERS
    assert threads_after <= threads_before  # the receiver's one thread existed before; the sink adds none
    assert per_instance < MAX_BYTES_PER_INSTANCE
    assert rss_after - rss_before < MAX_EXTRA_RSS_MB
