"""The floor: a bare Litestar app that forwards chat completions to the upstream over one aiohttp session.

No auth lookup, no JSON decoding, no logging: the least any Litestar-based Python gateway can do per request,
served by the same server as the gateway (uvicorn + uvloop + httptools, one worker). ``BENCH_BARE_CLIENT=httpx``
swaps in a plain ``httpx.AsyncClient`` to show the client's cost on the same app.

Run: ``BENCH_UPSTREAM=http://127.0.0.1:18001 uvicorn bench.bare_app:create_app --factory``.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request, Response, post

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ("create_app",)


def create_app() -> Litestar:
    upstream = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:18001").rstrip("/") + "/v1/chat/completions"
    kind = os.environ.get("BENCH_BARE_CLIENT", "aiohttp")
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        if kind == "httpx":
            import httpx

            limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
            client = httpx.AsyncClient(timeout=None, limits=limits)
            state["client"] = client
            try:
                yield
            finally:
                await client.aclose()
        else:
            import aiohttp

            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
            state["session"] = session
            try:
                yield
            finally:
                await session.close()

    headers = {"content-type": "application/json"}

    @post("/v1/chat/completions", status_code=200)
    async def chat(request: Request) -> Response[bytes]:
        if not request.headers.get("authorization"):
            return Response(content=b'{"error":{"message":"missing key"}}', status_code=401,
                            media_type="application/json")
        body = await request.body()
        if kind == "httpx":
            answer = await state["client"].post(upstream, content=body, headers=headers)
            return Response(content=answer.content, status_code=answer.status_code, media_type="application/json")
        async with state["session"].post(upstream, data=body, headers=headers) as answer:
            content = await answer.read()
            return Response(content=content, status_code=answer.status, media_type="application/json")

    return Litestar(route_handlers=[chat], lifespan=[lifespan], openapi_config=None, logging_config=None)
