"""10,000 Phoenix projects in one process: threads flat, memory bounded and measured per instance.

Phoenix runs in its own process, so every thread counted here is the gateway side's.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import uuid
from collections.abc import Callable

from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import make_event, wait_until
from sluicegate_arize_phoenix_sink.sink import ArizePhoenixSink, ArizeSink

from .conftest import ADMIN_SECRET, Phoenix

INSTANCES = 10_000
SENDERS = 100
MAX_BYTES_PER_INSTANCE = 3_000
MAX_EXTRA_RSS_MB = 40


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _rss_mb() -> float:
    gc.collect()
    return _status("VmRSS") / 1024


def _bytes_per_instance(build: Callable[[int], object]) -> tuple[list, float]:
    """Build ``INSTANCES`` instances; return them and the bytes tracemalloc saw allocated per instance."""
    tracemalloc.start()
    try:
        first = tracemalloc.take_snapshot()
        sinks = [build(n) for n in range(INSTANCES)]
        built = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sinks, sum(s.size_diff for s in built.compare_to(first, "filename")) / INSTANCES


async def test_ten_thousand_instances_threads_flat_and_memory_bounded(phoenix: Phoenix) -> None:
    project = f"scale-{uuid.uuid4().hex[:6]}"

    def build_phoenix(n: int) -> ArizePhoenixSink:
        # Each instance its own project, but the senders' spans go to one project, to be counted in one read.
        return ArizePhoenixSink(decode_vars(ArizePhoenixSink.Vars, {
            "phoenix_collector_endpoint": phoenix.url, "phoenix_api_key": ADMIN_SECRET,
            "phoenix_project_name": project if n < SENDERS else f"team-{n}"}))

    def build_arize(n: int) -> ArizeSink:
        return ArizeSink(decode_vars(ArizeSink.Vars, {"arize_space_key": f"space-{n % 10}",
                                                      "arize_api_key": "ak-scale-test-0123456789",
                                                      "arize_project_name": f"team-{n}"}))

    warm = build_phoenix(0)
    await warm.send([make_event()])  # the shared client (and any resolver thread) exist before the baseline
    threads_before, rss_before = _status("Threads"), _rss_mb()

    sinks, per_instance = _bytes_per_instance(build_phoenix)
    arize_sinks, per_arize_instance = _bytes_per_instance(build_arize)  # kept alive: counted in the RSS below

    for _ in range(2):
        await asyncio.gather(*(s.send([make_event(team_id=f"team-{n}")]) for n, s in enumerate(sinks[:SENDERS])))
    threads_after, rss_after = _status("Threads"), _rss_mb()
    print(f"\narize_phoenix sink: {INSTANCES} instances, {per_instance:.0f} bytes each (tracemalloc, vars included); "
          f"arize: {per_arize_instance:.0f} bytes each; {SENDERS} sending twice concurrently: "
          f"threads {threads_before} -> {threads_after}, RSS {rss_before:.1f} -> {rss_after:.1f} MB (both kinds built)")

    def stored() -> int:
        return len(phoenix.spans(project))

    expected = 1 + 2 * SENDERS  # the warm-up instance files under the same project
    await asyncio.to_thread(wait_until, lambda: stored() >= expected, timeout=30, interval=0.2,
                            what="every span in Phoenix")
    assert stored() == expected
    assert threads_after <= threads_before  # no thread per instance, none per send
    assert per_instance < MAX_BYTES_PER_INSTANCE and per_arize_instance < MAX_BYTES_PER_INSTANCE
    assert rss_after - rss_before < MAX_EXTRA_RSS_MB
