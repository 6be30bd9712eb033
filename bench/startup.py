"""Time-to-ready of ``sluicegate serve``: from the exec of the command until ``GET /health/readiness`` answers 200.

Each run starts ``python -m sluicegate serve --config <config> --port <free port>`` in a fresh temporary directory
(so the SQLite database is created and migrated, as on a first start; ``--warm`` reuses one directory, as a
restart does), polls a TCP connect + ``GET /health/readiness`` every 10 ms, and at the first 200 reads the CPU time
(user + system) of the whole process tree from ``/proc`` (every live descendant, plus what exited children left in
their parents' ``cutime``/``cstime``; without ``/proc``: ``getrusage(RUSAGE_CHILDREN)`` after the tree exits, which
then includes the shutdown). Then the gateway gets SIGTERM and is waited for. Prints each run and the median and
spread of wall and CPU time::

    .venv/bin/python -m bench.startup                      # 5 runs, examples/config.yaml, delivery process
    .venv/bin/python -m bench.startup --runs 9 --delivery inline --warm
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cpu_of(pid: int) -> float:
    """User + system seconds of ``pid`` and of its reaped children (``/proc/<pid>/stat`` fields 14-17)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICKS


def tree_cpu(root: int) -> float:
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += _cpu_of(pid)
        stack.extend(_children(pid))
    return total


def ready(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/health/readiness")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def one_run(config: Path, workdir: Path, delivery: str | None, timeout: float) -> tuple[float, float, str]:
    port = free_port()
    command = [sys.executable, "-m", "sluicegate", "serve", "--config", str(config), "--port", str(port),
               *(["--delivery", delivery] if delivery else [])]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = started + timeout
        while not ready(port):
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {proc.returncode}:\n"
                                   f"{proc.stdout.read().decode(errors='replace') if proc.stdout else ''}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not ready within {timeout}s")
            time.sleep(0.01)
        wall = time.perf_counter() - started
        cpu = tree_cpu(proc.pid) if Path("/proc/self/stat").exists() else -1.0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    if cpu < 0:  # no /proc: everything the tree used, shutdown included
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu, out.decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "config.yaml"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delivery", choices=("process", "inline"), default=None)
    parser.add_argument("--warm", action="store_true", help="reuse one working directory (database exists)")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--show-output", action="store_true", help="print the gateway's output of the last run")
    args = parser.parse_args(argv)
    config = Path(args.config).resolve()
    walls, cpus = [], []
    out = ""
    with tempfile.TemporaryDirectory(prefix="sluicegate-startup-") as base:
        for run in range(args.runs):
            workdir = Path(base) / ("warm" if args.warm else f"run{run}")
            workdir.mkdir(exist_ok=True)
            wall, cpu, out = one_run(config, workdir, args.delivery, args.timeout)
            walls.append(wall)
            cpus.append(cpu)
            print(f"run {run + 1}: ready in {wall:.3f} s wall, {cpu:.2f} s CPU (all processes)", flush=True)
    if args.show_output:
        print(out)
    mode = args.delivery or "default (process)"
    print(f"\ndelivery {mode}, {'warm' if args.warm else 'fresh'} start, {args.runs} runs: "
          f"wall median {statistics.median(walls):.3f} s (min {min(walls):.3f}, max {max(walls):.3f}); "
          f"CPU median {statistics.median(cpus):.2f} s (min {min(cpus):.2f}, max {max(cpus):.2f})")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
