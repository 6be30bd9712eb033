"""Where the gateway's memory goes as teams grow: resident set size by phase, at each team count.

``python -m bench.memory [--teams 10,10000] [--concurrency 16] [--seconds 8] [--logging on|off]``

For each team count, the ``gw-sinks`` set-up of ``bench.run`` (every team logging to its own langfuse project and
otel destination on loopback receivers, one key per team): the gateway is started on the server CPU and its RSS
read after start-up (the config: settings and routing), after the keys are made, after one request per key (the
key cache and every sink instance), during wrk load (events lingering for their batches) and after it. Each phase
is printed as it is read, then a table of the phases and of their growth from the smallest team count. Issue 8's
target compares the last column: RSS at 10 vs 10,000 teams within +150 MB. ``--logging off`` runs the same teams
and keys with logging nowhere: what each process holds for logging is the difference between the two runs.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from typing import Any

from bench.run import (
    VENV_BIN,
    Bench,
    add_cpu_options,
    delivery_pids,
    free_port,
    gateway_config,
    make_keys,
    parse_args,
    threads_and_rss,
    wait_http,
    warm_keys,
)

__all__ = ("main",)

PHASES = ("started", "keys made", "keys warmed", "under load", "after load")


def measure(teams: int, concurrency: int, seconds: float, cpu_args: list[str], delivery: str = "process",
            logging: str = "on") -> dict[str, float]:
    bench = Bench(parse_args(["--rows", "gw-sinks", "--teams", str(teams), *cpu_args]))
    rss: dict[str, float] = {}

    def read(phase: str, pid: int) -> None:
        delivery = tuple(delivery_pids(pid))
        rss[phase] = threads_and_rss(pid, skip=delivery)[1]
        rss[f"delivery {phase}"] = threads_and_rss(pid, only=delivery)[1] if delivery else 0.0
        print(f"  {teams} teams, {phase}: serving processes {rss[phase]:.0f} MB"
              + (f", delivery process {rss[f'delivery {phase}']:.0f} MB" if delivery else ""), flush=True)

    try:
        upstream, _ = bench.start_mock("mock-upstream", "upstream")
        for name in ("langfuse", "otel"):
            bench.receiver_urls[name], _ = bench.start_mock(f"receiver-{name}", "receiver")
        workdir = bench.tmp / "gw"
        (workdir / "sinks").mkdir(parents=True)
        config = gateway_config(workdir, upstream, "telemetry", bench.teams, bench.receiver_urls,
                                "telemetry" if logging == "on" else "off")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = bench.procs.start("gw", [str(VENV_BIN / "sluicegate"), "serve", "--config", str(config),
                                        "--port", str(port), "--log-level", "warning", "--delivery", delivery],
                                 cpu=bench.server_cpu)
        wait_http(base + "/health/liveliness", proc, timeout=300)
        bench.pin_delivery(proc.pid)
        read("started", proc.pid)
        keys = bench.tmp / "keys.txt"
        asyncio.run(make_keys(base, bench.teams, keys))
        read("keys made", proc.pid)
        failures = asyncio.run(warm_keys(base, [f"sk-bench-{t}-k0" for t in bench.teams]))
        if failures:
            print(f"  {failures} warm-up requests failed", flush=True)
        read("keys warmed", proc.pid)
        result: dict[str, Any] = {}
        load = threading.Thread(target=lambda: result.update(bench.wrk.run(base, keys, concurrency, seconds)))
        load.start()
        time.sleep(seconds * 0.75)
        read("under load", proc.pid)
        load.join()
        read("after load", proc.pid)
        rps = result.get("requests", 0) / max(1e-9, result.get("duration_us", 0) / 1e6)
        print(f"  {teams} teams: {rps:,.0f} req/s at c={concurrency}", flush=True)
        return rss
    finally:
        bench.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teams", default="10,10000", help="team counts, comma-separated (default 10,10000)")
    parser.add_argument("--concurrency", type=int, default=16, help="wrk connections during the load (16)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of load (8)")
    parser.add_argument("--delivery", default="process", choices=("process", "inline"),
                        help="sluicegate serve --delivery (default process: the serving workers' RSS and the "
                             "delivery process's are shown apart)")
    parser.add_argument("--logging", default="on", choices=("on", "off"),
                        help="on (default): every team logs to its langfuse project and otel destination; off: the "
                             "same teams and keys, logging nowhere (what the serving workers hold for logging is "
                             "the difference)")
    add_cpu_options(parser)
    args = parser.parse_args(argv)
    cpu_args = ["--load-cpu", str(args.load_cpu), "--server-cpu", str(args.server_cpu)]
    counts = [int(t) for t in args.teams.split(",") if t.strip()]
    found = {count: measure(count, args.concurrency, args.seconds, cpu_args, args.delivery, args.logging)
             for count in counts}
    first = found[counts[0]]
    tables = [("serving processes", "")] + ([("delivery process", "delivery ")] if args.delivery == "process" else [])
    for title, prefix in tables:
        print(f"\n{title}:\n| teams | " + " | ".join(PHASES) + " |")
        print("|---:|" + "---:|" * len(PHASES))
        for count in counts:
            cells = [f"{found[count][prefix + p]:.0f}" + (f" (+{found[count][prefix + p] - first[prefix + p]:.0f})"
                                                           if count != counts[0] else "") for p in PHASES]
            print(f"| {count:,} | " + " | ".join(cells) + " |")
    print("\nRSS in MB; in brackets, the growth from the first team count.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
