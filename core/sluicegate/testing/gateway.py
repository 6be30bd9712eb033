"""Run a real gateway in a test: uvicorn on a loopback socket, in the test's own event loop.

Requests, the lifespan and the delivery tasks share one loop, as in production, so a test can wait on
delivery with ``await`` and nothing crosses event loops::

    async with running_gateway(config) as gw:
        key = await gw.new_key(team_id="team-1")
        response = await gw.chat(key, "hello")
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn

from sluicegate.app import create_app
from sluicegate.config import parse_settings
from sluicegate.delivery.service import DeliveryService

__all__ = ("RunningGateway", "running_gateway")


class RunningGateway:
    """A served gateway: ``client`` (httpx, base URL set), ``gateway`` (its state) and request helpers."""

    def __init__(self, client: httpx.AsyncClient, app: Any, master_key: str | None,
                 delivery: DeliveryService | None = None) -> None:
        self.client = client
        self.app = app
        self.gateway = app.state.gateway
        self.master_key = master_key
        self.delivery = delivery
        """The delivery process's work, run in this loop (``delivery="process"``); None inline."""

    async def drain(self, timeout: float = 10.0) -> bool:
        """Deliver everything accepted so far, now; True when nothing is left pending within ``timeout``.

        Inline: the gateway's dispatcher drains. With a delivery service: the worker writes its log, the service
        reads all of it, and its dispatcher drains."""
        if self.delivery is None:
            if self.gateway.delivery_mode == "process":
                raise RuntimeError("a worker alone does not deliver: drain the gateway running the delivery service")
            return await self.gateway.dispatcher.drain(timeout)
        self.gateway.dispatcher.flush_spool()
        while self.delivery.pump():
            await asyncio.sleep(0)
        return await self.delivery.dispatcher.drain(timeout)

    async def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, path, headers={"Authorization": f"Bearer {self.master_key}"},
                                         **kwargs)

    async def new_key(self, **body: Any) -> str:
        response = await self.admin("POST", "/key/generate", json=body)
        if response.status_code != 200:
            raise AssertionError(f"/key/generate answered {response.status_code}: {response.text}")
        return response.json()["key"]

    async def chat(self, key: str, content: str = "hello", *, model: str = "mock", stream: bool = False,
                   **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream, **extra}
        return await self.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})


@asynccontextmanager
async def running_gateway(config: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                          start_timeout: float = 20.0, source: str | None = None, *,
                          delivery: str = "inline") -> AsyncIterator[RunningGateway]:
    """Serve ``config`` (a parsed config.yaml as a dict) until the block ends, then shut down cleanly.
    ``source``: the file ``config`` was read from (what ``POST /config/reload`` reads again).

    ``delivery="process"``: the app is a serving worker (events go to its log) and the delivery process's work
    (:class:`~sluicegate.delivery.service.DeliveryService`) runs beside it in this loop, started first and stopped
    last, as ``sluicegate serve`` orders the processes. ``delivery="worker"``: a serving worker alone, for a
    second worker beside a ``"process"`` one on the same spool directory (its log is read by that one's service)."""
    if delivery not in ("inline", "process", "worker"):
        raise ValueError(f"delivery must be 'inline', 'process' or 'worker', not {delivery!r}")
    settings = parse_settings(dict(config), source=source)
    service = DeliveryService(settings, environ=environ) if delivery == "process" else None
    if service is not None:
        await service.start()
    try:
        async with _serving(settings, environ, start_timeout, delivery, service) as gw:
            yield gw
    finally:
        if service is not None:
            await service.aclose()


@asynccontextmanager
async def _serving(settings: Any, environ: Mapping[str, str] | None, start_timeout: float, delivery: str,
                   service: DeliveryService | None) -> AsyncIterator[RunningGateway]:
    app = create_app(settings, environ=environ, delivery="inline" if delivery == "inline" else "process")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + start_timeout
    while not server.started:  # uvicorn offers no event for this; poll its flag with a deadline
        if task.done():
            task.result()
        if time.monotonic() > deadline:
            raise TimeoutError(f"gateway did not start within {start_timeout:g} s")
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield RunningGateway(client, app, settings.general_settings.master_key, service)
    finally:
        server.should_exit = True
        await task
        sock.close()
