"""CPU per POST of the sinks' HTTP client (``sluicegate.net.http``) against aiohttp's, to a loopback receiver.

``python -m bench.http_client [--posts 5000] [--body 2000] [--concurrency 1,16] [--repeat 2]``

The receiver (``bench.mock_upstream --mode receiver``) runs on the load CPU and this process on the server CPU,
as in ``bench.run``; each client sends ``--posts`` POSTs of a ``--body``-byte protobuf body with the headers a
sink sends, ``--concurrency`` at a time over keep-alive connections. Prints µs of this process's CPU per POST,
the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
from pathlib import Path

import aiohttp

from bench.run import Procs, add_cpu_options, pin_to_server_cpu, start_receiver
from sluicegate.net.http import HttpClient, encode_headers

__all__ = ("main",)

_HEADERS = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip",
            "Authorization": "Basic YmVuY2g6YmVuY2g=", "x-langfuse-ingestion-version": "4"}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _aiohttp(url: str, body: bytes, posts: int, concurrency: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate, session.post(url, data=body, headers=_HEADERS) as response:
                await response.read()
                assert response.status == 200

        await asyncio.gather(*(one() for _ in range(posts)))


async def _lean(url: str, body: bytes, posts: int, concurrency: int) -> None:
    client = HttpClient(user_agent="bench", max_per_origin=64)
    headers = encode_headers(_HEADERS)
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            response = await client.post(url, body, headers=headers, timeout=10)
            assert response.status == 200

    try:
        await asyncio.gather(*(one() for _ in range(posts)))
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=5000)
    parser.add_argument("--body", type=int, default=2000, help="body bytes")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--repeat", type=int, default=2)
    add_cpu_options(parser)
    args = parser.parse_args(argv)
    import uvloop

    multi = pin_to_server_cpu(args)
    procs = Procs(Path(tempfile.mkdtemp(prefix="sluicegate-http-client-")))
    try:
        base = start_receiver(procs, "receiver", args.load_cpu if multi else None)
        url = base + "/api/public/otel/v1/traces"
        body = os.urandom(args.body)
        print(f"{'client':<24} {'concurrency':>11} {'µs CPU per POST':>16}")
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            for name, run in (("aiohttp", _aiohttp), ("sluicegate.net.http", _lean)):
                uvloop.run(run(url, body, 200, concurrency))  # warm: connections, imports
                best = float("inf")
                for _ in range(args.repeat):
                    before = _cpu()
                    uvloop.run(run(url, body, args.posts, concurrency))
                    best = min(best, (_cpu() - before) / args.posts)
                print(f"{name:<24} {concurrency:>11} {best * 1e6:>16.1f}", flush=True)
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
