"""CPU per request of the rate limits alone, in process: :meth:`RateLimiter.check` plus :meth:`Ticket.finish` and the
success headers, for a key with no limits, a key with rpm/tpm/parallel limits and a team limit, counted in process
and in Redis (127.0.0.1:6379), one request at a time and 64 at once (the Redis sender batches concurrent checks).

    .venv/bin/python -m bench.limits [--requests 20000]

CPU is the process's (``time.process_time``): the Redis server's own work is not in it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from sluicegate.auth import AuthContext
from sluicegate.config import parse_settings
from sluicegate.db.store import KeyRecord, TeamRecord
from sluicegate.limits.ratelimit import RateLimiter

LIMITS = {"rpm_limit": 10**9, "tpm_limit": 10**12, "max_parallel_requests": 10**6}


def _ctx(limited: bool) -> AuthContext:
    token = uuid.uuid4().hex * 2
    key = KeyRecord(token_id=token, key_name="sk-...bench", team_id="bench-team", **(LIMITS if limited else {}))
    team = TeamRecord(team_id=f"bench-team-{token[:8]}", rpm_limit=10**9 if limited else None)
    return AuthContext(token_id=token, is_admin=False, key=key, team=team)


async def _run(limiter: RateLimiter, ctx: AuthContext, requests: int, concurrency: int) -> float:
    async def one() -> None:
        ticket = await limiter.check(ctx, "m")
        if ticket is not None:
            ticket.headers()
            ticket.finish(30)

    for _ in range(200):  # warm: plans built, scripts loaded, connections open
        await one()
    began = time.process_time()
    for _ in range(requests // concurrency):
        await asyncio.gather(*(one() for _ in range(concurrency))) if concurrency > 1 else await one()
    if limiter.redis is not None:
        while not limiter.redis.idle:  # the queued updates are part of the cost
            await asyncio.sleep(0.001)
    return (time.process_time() - began) / requests * 1e6


async def main(requests: int) -> None:
    rows: list[tuple[str, str, Any]] = []
    for mode, cfg in (("in process", {}),
                      ("Redis", {"router_settings": {"redis_host": "127.0.0.1", "redis_port": 6379}})):
        limiter = RateLimiter(parse_settings(cfg))
        await limiter.start()
        try:
            for label, limited in (("no limits", False), ("key rpm+tpm+parallel, team rpm", True)):
                for concurrency in (1, 64):
                    if not limited and concurrency > 1:
                        continue
                    us = await _run(limiter, _ctx(limited), requests, concurrency)
                    rows.append((mode, f"{label}, c={concurrency}", us))
        finally:
            await limiter.aclose()
    print("| counted | key | CPU µs per request |\n|---|---|---:|")
    for mode, label, us in rows:
        print(f"| {mode} | {label} | {us:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().requests))
