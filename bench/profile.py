"""Profile the gateway under wrk load with py-spy and summarise where its CPU goes.

``python -m bench.profile [--row gw-sinks] [--concurrency 64] [--seconds 15] [--py-spy PATH]``

Starts the same set-up as ``bench.run`` (mock upstream and receivers on the load CPU, the gateway pinned to the
server CPU, one key per team, warmed), runs wrk for the duration while ``py-spy record`` samples the gateway,
and prints the top frames by own (self) time and by inclusive time. py-spy is never a project dependency:
install it apart, e.g. ``pip install --target /tmp/pyspy py-spy`` and pass ``--py-spy /tmp/pyspy/bin/py-spy``.
Writes ``bench/results/profile-<row>.txt`` (summary) and ``profile-<row>.collapsed`` (for flamegraph tools).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.run import (
    HERE,
    ROWS,
    VENV_BIN,
    Bench,
    free_port,
    gateway_config,
    make_keys,
    parse_args,
    telemetry_available,
    wait_http,
    warm_keys,
)

__all__ = ("main", "summarise")


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/module.py:123)"; keep function and file:line tail.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    parts = where.split("/")
    tail = "/".join(parts[-2:]) if len(parts) > 1 else where
    return f"{name} ({tail})"


_IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:81)", "_connection_worker_thread (aiosqlite/core.py:59)",
                "Condition.wait (threading.py", "Event.wait (threading.py", "Queue.get (queue.py")


def _is_idle(leaf: str) -> bool:
    """A worker thread blocked on its queue (py-spy cannot always tell it is idle): not CPU."""
    return any(_short(leaf).startswith(marker) or leaf.startswith(marker) for marker in _IDLE_LEAVES)


def summarise(collapsed: Path, top: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_package: collections.Counter[str] = collections.Counter()
    by_thread: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if _is_idle(frames[-1]):
            idle += count
            continue
        total += count
        thread = "event loop" if any("Runner.run (" in f or "asyncio_run (" in f for f in frames) else (
            "worker threads or partial stacks")
        by_thread[thread] += count
        own[_short(frames[-1])] += count
        by_package[_package_of(frames[-1].partition(" (")[2].split(":")[0])] += count
        for frame in dict.fromkeys(_short(f) for f in frames):
            inclusive[frame] += count
    if not total:
        return "no busy samples\n"
    lines = [f"busy samples: {total} (idle worker-thread samples dropped: {idle})", "", "by thread:"]
    lines += [f"  {n * 100 / total:5.1f} %  {name}" for name, n in by_thread.most_common(8)]
    lines += ["", f"top {top} by own time (% of busy samples):"]
    lines += [f"  {n * 100 / total:5.1f} %  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "own time by package:"]
    lines += [f"  {n * 100 / total:5.1f} %  {pkg}" for pkg, n in by_package.most_common(20)]
    lines += ["", f"top {top * 2} by inclusive time:"]
    lines += [f"  {n * 100 / total:5.1f} %  {frame}" for frame, n in inclusive.most_common(top * 2)]
    return "\n".join(lines) + "\n"


def _package_of(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    for marker in ("core/sluicegate/", "plugins/"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return (marker + rest.split("/", 1)[0]) if marker == "plugins/" else "sluicegate/" + rest.split("/")[0]
    if "/lib/python3" in path:
        return "stdlib:" + path.rsplit("/", 1)[-1]
    return path or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", default="gw-sinks", choices=[r.id for r in ROWS if r.kind == "gateway"])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--teams", type=int, default=1000)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy")
    parser.add_argument("--native", action="store_true", help="include native (C) frames")
    args = parser.parse_args(argv)
    if not Path(args.py_spy).exists():
        raise SystemExit(f"py-spy not found at {args.py_spy}: pip install --target /tmp/pyspy py-spy")
    seconds = max(2.0, min(args.seconds, 120.0))
    bench = Bench(parse_args(["--teams", str(args.teams), "--rows", args.row]))
    row = next(r for r in ROWS if r.id == args.row)
    out = HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    collapsed = out / f"profile-{row.id}.collapsed"
    try:
        upstream, _ = bench.start_mock("mock-upstream", "upstream")
        bench.sink_mode = "none"
        if row.sinks == "telemetry":
            ok, why = telemetry_available()
            bench.sink_mode = "telemetry" if ok else "file"
            if ok:
                for name in ("langfuse", "otel"):
                    bench.receiver_urls[name], _ = bench.start_mock(f"receiver-{name}", "receiver")
            else:
                print(f"langfuse/otel not available ({why}); profiling with the file sink", flush=True)
        workdir = bench.tmp / row.id
        (workdir / "sinks").mkdir(parents=True)
        config = gateway_config(workdir, upstream, row.sinks, bench.teams, bench.receiver_urls, bench.sink_mode,
                                row.provider, row.deployments, row.routing_strategy)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = bench.procs.start(row.id, [str(VENV_BIN / "sluicegate"), "serve", "--config", str(config),
                                          "--port", str(port), "--log-level", "warning"],
                                 cpu=bench.server_cpu, env={"SLUICEGATE_HTTP_CLIENT": row.client})
        wait_http(base + "/health/liveliness", proc, timeout=120)
        keys = bench.tmp / "keys.txt"
        asyncio.run(make_keys(base, bench.teams, keys))
        asyncio.run(warm_keys(base, [f"sk-bench-{t}-k0" for t in bench.teams]))
        bench.wrk.run(base, keys, 16, 1)
        result: dict[str, object] = {}

        def load() -> None:
            result["wrk"] = bench.wrk.run(base, keys, args.concurrency, seconds + 2)

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(1)
        spy = [args.py_spy, "record", "--pid", str(proc.pid), "--duration", str(int(seconds)), "--rate", "200",
               "--format", "raw", "--output", str(collapsed), "--nonblocking"]
        if args.native:
            spy.append("--native")
        if bench.load_cpu is not None:
            spy = ["taskset", "-c", str(bench.load_cpu), *spy]
        done = subprocess.run(spy, capture_output=True, text=True, timeout=seconds + 60)
        loader.join(timeout=seconds + 90)
        if done.returncode != 0 or not collapsed.exists():
            raise SystemExit(f"py-spy failed ({done.returncode}): {done.stderr[-800:]}")
        wrk = result.get("wrk") or {}
        header = (f"profile of row {row.id} ({row.label.format(teams=args.teams)}), wrk c={args.concurrency}: "
                  f"{wrk.get('requests', 0) * 1e6 / max(wrk.get('duration_us', 1), 1):,.0f} req/s "
                  f"while sampled\n")
        summary = header + summarise(collapsed)
        (out / f"profile-{row.id}.txt").write_text(summary)
        print(summary)
        print(f"bench: wrote {out / f'profile-{row.id}.txt'} and {collapsed}")
    finally:
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
