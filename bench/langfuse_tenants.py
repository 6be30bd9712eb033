"""Threads and memory of the ``langfuse`` sink with 10,000 Langfuse projects in one process.

The receiver (``sluicegate_langfuse_sink.testing.LangfuseReceiver``, a loopback server speaking Langfuse's OTLP
ingestion API with Basic auth per project) runs in a child process, so the figures are the sink's alone.
Each round sends one event per project, all projects at once; every send must be answered 2xx by its own
project. For comparison it also builds a few official SDK clients, one per project (LiteLLM's approach).

Run: ``python -m bench.langfuse_tenants [--projects 10000] [--rounds 3] [--sdk-clients 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import subprocess
import sys
import time

__all__ = ("main",)


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def threads() -> int:
    return _status("Threads")


def rss_mb() -> float:
    gc.collect()
    return _status("VmRSS") / 1024


def serve(projects: int) -> None:
    """Child process: run the receiver, print its URL, answer ``count`` lines with the spans received."""
    from sluicegate_langfuse_sink.testing import LangfuseReceiver

    with LangfuseReceiver(keep_spans=False) as receiver:
        for n in range(projects):
            receiver.add_project(f"pk-lf-{n}", f"sk-lf-{n}", project_id=f"project-{n}")
        print(receiver.url, flush=True)
        for line in sys.stdin:
            if line.strip() == "count":
                print(receiver.total_span_ids(), flush=True)
            else:
                break


async def measure(url: str, projects: int, rounds: int) -> dict[str, float]:
    from sluicegate.sinks.vars import decode_vars
    from sluicegate.testing import make_event
    from sluicegate_langfuse_sink.sink import LangfuseSink

    def sink(n: int) -> LangfuseSink:
        return LangfuseSink(decode_vars(LangfuseSink.Vars, {
            "langfuse_public_key": f"pk-lf-{n}", "langfuse_secret": f"sk-lf-{n}", "langfuse_host": url}))

    warm = [sink(n) for n in range(20)]
    await asyncio.gather(*(s.send([make_event()]) for s in warm))
    # The events exist before the baseline: in the gateway they sit in the core's queues, not in the sink.
    # Fresh events per round: a re-sent event has the same span id and would only upsert.
    rounds_of_events = [[[make_event(team_id=f"team-{n}")] for n in range(projects)] for _ in range(rounds)]
    figures = {"threads_baseline": threads(), "rss_baseline_mb": rss_mb()}
    sinks = [sink(n) for n in range(projects)]
    figures["rss_instances_mb"] = rss_mb()
    lag = 0.0
    for round_, events in enumerate(rounds_of_events):
        # Loop responsiveness while every project sends at once: the longest a 5 ms timer waited past its
        # deadline. It includes scheduling the burst itself (all sends start in one loop iteration).
        stop = asyncio.Event()

        async def probe() -> None:
            nonlocal lag
            while not stop.is_set():
                start = time.perf_counter()
                await asyncio.sleep(0.005)
                lag = max(lag, time.perf_counter() - start - 0.005)

        probe_task = asyncio.create_task(probe())
        start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(s.send(batch) for s, batch in zip(sinks, events)))
        figures[f"round{round_ + 1}_events_per_s"] = projects / (time.perf_counter() - start)
        used = resource.getrusage(resource.RUSAGE_SELF)
        figures[f"round{round_ + 1}_sink_cpu_us_per_event"] = (
            (used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime) / projects * 1e6)
        stop.set()
        await probe_task
        figures[f"threads_after_round{round_ + 1}"] = threads()
        figures[f"rss_after_round{round_ + 1}_mb"] = rss_mb()
    figures["max_loop_lag_ms"] = lag * 1000
    await LangfuseSink.shutdown()
    return figures


def sdk_clients(count: int) -> dict[str, float]:
    """One official SDK client per project, as LiteLLM does (it stops at 50)."""
    from langfuse import Langfuse
    from opentelemetry.sdk.trace import TracerProvider

    before_threads, before_rss = threads(), rss_mb()
    clients = []
    start = time.perf_counter()
    for n in range(count):
        clients.append(Langfuse(public_key=f"pk-lf-sdk-{n}", secret_key="sk", base_url="http://127.0.0.1:9",
                                tracer_provider=TracerProvider()))
    elapsed = time.perf_counter() - start
    figures = {"sdk_clients": count, "sdk_threads_added": threads() - before_threads,
               "sdk_rss_added_mb": rss_mb() - before_rss, "sdk_ms_per_client": elapsed / count * 1000}
    for client in clients:
        client.shutdown()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sdk-clients", type=int, default=10)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.projects)
        return
    child = subprocess.Popen([sys.executable, "-m", "bench.langfuse_tenants", "--serve",
                              "--projects", str(args.projects)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = child.stdout.readline().strip()  # type: ignore[union-attr]
        figures = asyncio.run(measure(url, args.projects, args.rounds))
        child.stdin.write("count\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        received = int(child.stdout.readline())  # type: ignore[union-attr]
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(30)
    expected = 20 + args.projects * args.rounds
    figures.update(received=received, expected=expected)
    if args.sdk_clients:
        figures.update(sdk_clients(args.sdk_clients))
    print(f"langfuse sink, {args.projects} projects, {args.rounds} rounds of one event per project")
    for key, value in figures.items():
        print(f"  {key:28} {value:12.1f}" if isinstance(value, float) else f"  {key:28} {value:12d}")
    per_instance = (figures["rss_instances_mb"] - figures["rss_baseline_mb"]) * 1024 * 1024 / args.projects
    print(f"  {'bytes_per_instance':28} {per_instance:12.0f}")
    if received != expected:
        raise SystemExit(f"lost events: received {received} of {expected}")


if __name__ == "__main__":
    main()
