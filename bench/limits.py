"""CPU per request of the rate limits alone, in process: :meth:`RateLimiter.check` plus :meth:`Ticket.finish` and the
success headers, for a key with no limits, a key with rpm/tpm/parallel limits and a team limit, counted in process
and in Redis (127.0.0.1:6379), one request at a time and 64 at once (the Redis sender batches concurrent checks).

    .venv/bin/python -m bench.limits [--requests 20000] [--gateway]

CPU is the process's (``time.process_time``): the Redis server's own work is not in it. ``--gateway`` measures the
same through a real gateway served in this process (uvicorn on loopback, a mock model, an httpx client in the
same process): batches of requests with a key without limits and with the limited key, interleaved, so the
difference between the two is what the limits cost a request end to end (headers included), with the machine's
load falling on both alike.
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


async def _asgi_chat(app: Any, key: str, body: bytes) -> int:
    """One chat request straight into the gateway's ASGI app (no HTTP client or server in the measurement)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 4000), "state": {},
             "headers": [(b"authorization", b"Bearer " + key.encode()), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Future()  # no disconnect: the request completes first
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def gateway(requests: int, rounds: int = 10) -> None:
    import tempfile

    from sluicegate.testing.gateway import running_gateway

    print("| counted | key | gateway CPU µs per request | + µs over no limits |\n|---|---|---:|---:|")
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hello"}]}'
    for mode, extra in (("in process", {}),
                        ("Redis", {"router_settings": {"redis_host": "127.0.0.1", "redis_port": 6379}})):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = {"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m", "mock_response": "hi"}}],
                   "general_settings": {"master_key": "sk-bench-master",
                                        "database_url": f"sqlite+aiosqlite:///{tmp}/g.db"}, **extra}
            async with running_gateway(cfg) as gw:
                free, limited = f"bench-{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:8]}"
                await gw.admin("POST", "/team/new", json={"team_id": free})
                await gw.admin("POST", "/team/new", json={"team_id": limited, "rpm_limit": 10**9})
                keys = {"no limits": await gw.new_key(team_id=free),
                        "key rpm+tpm+parallel, team rpm": await gw.new_key(team_id=limited, **LIMITS)}
                totals = dict.fromkeys(keys, 0.0)
                for key in keys.values():
                    for _ in range(200):
                        assert await _asgi_chat(gw.app, key, body) == 200
                for _ in range(rounds):
                    for label, key in keys.items():
                        began = time.process_time()
                        for _ in range(requests // rounds):
                            await _asgi_chat(gw.app, key, body)
                        totals[label] += time.process_time() - began
                base = next(iter(totals.values())) / requests * 1e6
                for label, total in totals.items():
                    us = total / requests * 1e6
                    print(f"| {mode} | {label} | {us:.0f} | {us - base:+.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--gateway", action="store_true", help="through a real gateway (see above)")
    args = parser.parse_args()
    asyncio.run(gateway(args.requests) if args.gateway else main(args.requests))
