"""10,000 S3 destinations in one process: threads flat, memory bounded and measured per instance.

moto's server runs in this process and starts a thread per connection it serves; those threads (named
``... (process_request_thread)`` by werkzeug) are the server's, not the sink's: threads are counted by the kernel
once the sink's shared client has closed its connections and those server threads have ended.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc

from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import make_event, wait_until
from sluicegate_s3_sink.sink import S3Sink

INSTANCES = 10_000
SENDERS = 100
MAX_BYTES_PER_INSTANCE = 3_000
MAX_EXTRA_RSS_MB = 40


def _kernel_threads() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def _server_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


async def _settled_threads() -> int:
    """Kernel threads once the shared client is closed and moto has ended the threads serving its connections."""
    await S3Sink.shutdown()
    await asyncio.to_thread(wait_until, lambda: _server_threads() == 0, timeout=10, what="moto's threads to end")
    return _kernel_threads()


def _rss_mb() -> float:
    gc.collect()
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


async def test_ten_thousand_instances_threads_flat_and_memory_bounded(moto_s3, new_bucket) -> None:
    buckets = [new_bucket("scale") for _ in range(3)]

    def build(n: int) -> S3Sink:
        return S3Sink(decode_vars(S3Sink.Vars, moto_s3.writer.vars(
            moto_s3, buckets[n % len(buckets)], s3_path=f"team-{n}")))

    warm = build(INSTANCES + 1)
    await warm.send([make_event()])  # the shared client and botocore's signer exist before the baseline
    threads_before, rss_before = await _settled_threads(), _rss_mb()

    tracemalloc.start()
    first = tracemalloc.take_snapshot()
    sinks = [build(n) for n in range(INSTANCES)]
    built = tracemalloc.take_snapshot()
    per_instance = sum(s.size_diff for s in built.compare_to(first, "filename")) / INSTANCES
    tracemalloc.stop()

    for _ in range(2):
        await asyncio.gather(*(s.send([make_event(team_id=f"team-{n}")]) for n, s in enumerate(sinks[:SENDERS])))
    threads_after, rss_after = await _settled_threads(), _rss_mb()
    print(f"\ns3 sink: {INSTANCES} instances, {per_instance:.0f} bytes each (tracemalloc, vars included); "
          f"{SENDERS} sending twice concurrently: threads {threads_before} -> {threads_after}, "
          f"RSS {rss_before:.1f} -> {rss_after:.1f} MB")
    stored = sum(len(moto_s3.keys(b)) for b in buckets)
    assert stored == 1 + 2 * SENDERS  # every send stored its own object
    assert threads_after <= threads_before  # no thread per instance, none per send
    assert per_instance < MAX_BYTES_PER_INSTANCE
    assert rss_after - rss_before < MAX_EXTRA_RSS_MB
    for s in [*sinks, warm]:
        await s.aclose()
