"""1,000 Langfuse projects in one process: threads and memory do not grow with the number of projects.

Delivery goes to the loopback Langfuse receiver (no runnable Langfuse server here: it needs Docker), which
checks each project's Basic auth, so every event below was accepted by its own project.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

from langfuse import Langfuse
from opentelemetry.sdk.trace import TracerProvider

from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import make_event
from sluicegate_langfuse_sink.sink import LangfuseSink
from sluicegate_langfuse_sink.testing import LangfuseReceiver

PROJECTS = 1_000
WARM_UP = 20
MAX_EXTRA_THREADS = 0
"""The shared client adds no thread per project; aiohttp skips the resolver thread for an IP host."""
MAX_EXTRA_RSS_MB = 32
"""A fixed bound, independent of the project count (measured: a few MB for 1,000 projects)."""


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def os_threads() -> int:
    """Threads of this process as the kernel counts them (C threads included, not just Python's)."""
    return _proc_status("Threads")


def rss_mb() -> float:
    gc.collect()
    return _proc_status("VmRSS") / 1024


def _sink(url: str, n: int) -> LangfuseSink:
    return LangfuseSink(decode_vars(LangfuseSink.Vars, {
        "langfuse_public_key": f"pk-lf-{n}", "langfuse_secret": f"sk-lf-{n}", "langfuse_host": url}))


async def test_thousand_projects_bounded_threads_and_memory() -> None:
    with LangfuseReceiver(keep_spans=False) as receiver:
        for n in range(PROJECTS + WARM_UP):
            receiver.add_project(f"pk-lf-{n}", f"sk-lf-{n}", project_id=f"project-{n}")
        # Warm up: the shared client, its connections and the receiver exist before the baseline.
        warm = [_sink(receiver.url, PROJECTS + n) for n in range(WARM_UP)]
        await asyncio.gather(*(s.send([make_event(team_id=f"team-{PROJECTS + n}")]) for n, s in enumerate(warm)))
        threads_before, rss_before = os_threads(), rss_mb()

        sinks = [_sink(receiver.url, n) for n in range(PROJECTS)]
        for round_ in range(2):
            await asyncio.gather(*(s.send([make_event(team_id=f"team-{n}")]) for n, s in enumerate(sinks)))
        threads_after, rss_after = os_threads(), rss_mb()

        print(f"\nlangfuse sink, {PROJECTS} projects: threads {threads_before} -> {threads_after}, "
              f"RSS {rss_before:.1f} -> {rss_after:.1f} MB")
        # Every event arrived, each at its own project.
        assert receiver.total_span_ids() == WARM_UP + 2 * PROJECTS
        assert all(len(receiver.span_ids(f"project-{n}")) == 2 for n in range(0, PROJECTS, 97))
        assert threads_after - threads_before <= MAX_EXTRA_THREADS
        assert rss_after - rss_before < MAX_EXTRA_RSS_MB
        for s in sinks + warm:
            await s.aclose()


def test_thread_probe_sees_per_project_clients() -> None:
    """Negative control: one SDK client per project (what LiteLLM does) shows up in the same probe."""
    before = os_threads()
    clients: list[Any] = []
    try:
        for n in range(3):
            clients.append(Langfuse(public_key=f"pk-lf-probe-{n}", secret_key="sk", base_url="http://127.0.0.1:9",
                                    tracer_provider=TracerProvider()))
        grown = os_threads() - before
    finally:
        for client in clients:
            client.shutdown()
    assert grown >= 3, grown
    assert threading.active_count() >= 1
