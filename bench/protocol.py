"""CPU per request of the serving protocol: uvicorn's httptools protocol vs ours with the request-head limits.

``python -m bench.protocol [--requests 20000] [--rounds 5]``

Drives both protocol classes in process, on the gateway's serving loop (uvloop), with a transport that only collects what is written
and a minimal ASGI app (200, a short JSON body), over keep-alive connections: each request's bytes are handed to
``data_received``, the app runs, the response is written. No sockets, so the numbers are the protocols' alone (and
the app's, the same for both). Rounds alternate between the two classes; the best round of each is reported, with
the difference per request: what ``header_timeout`` and ``max_header_bytes`` cost the request path.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from sluicegate.serving import new_event_loop
from sluicegate.serving_http import GatewayHttpProtocol

__all__ = ("main",)

_PAYLOAD = b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}'
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:4000\r\nUser-Agent: wrk\r\n"
           b"Authorization: Bearer sk-bench-0123456789abcdef\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(_PAYLOAD), _PAYLOAD))
BODY = b'{"id":"x","object":"chat.completion","choices":[]}'


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]})
    await send({"type": "http.response.body", "body": BODY})


class _Transport(asyncio.Transport):
    """Collects writes; counts complete responses so the driver knows when to send the next request."""

    def __init__(self) -> None:
        super().__init__()
        self.responses = 0
        self.done: asyncio.Event | None = None
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data).endswith(BODY):
            self.responses += 1
            if self.done is not None:
                self.done.set()

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 4000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _round(protocol_class: type[HttpToolsProtocol], config: Config, requests: int) -> float:
    """CPU seconds per request for ``requests`` keep-alive requests on one connection."""
    loop = asyncio.get_running_loop()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    transport = _Transport()
    protocol.connection_made(transport)
    started = time.process_time()
    for _ in range(requests):
        transport.done = asyncio.Event()
        protocol.data_received(REQUEST)
        await transport.done.wait()
    elapsed = time.process_time() - started
    protocol.connection_lost(None)
    assert transport.responses == requests, transport.responses
    return elapsed / requests


async def _run(requests: int, rounds: int) -> dict[str, float]:
    config = Config(app=_app, lifespan="off", log_level="warning", access_log=False)
    config.load()
    best = {"uvicorn httptools": float("inf"), "sluicegate (head limits)": float("inf")}
    for _ in range(rounds):
        for name, cls in (("uvicorn httptools", HttpToolsProtocol), ("sluicegate (head limits)",
                                                                      GatewayHttpProtocol)):
            best[name] = min(best[name], await _round(cls, config, requests))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.protocol", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:  # the serving loop (uvloop), as in production
        best = runner.run(_run(args.requests, args.rounds))
    base = best["uvicorn httptools"]
    for name, value in best.items():
        print(f"{name:28s} {value * 1e6:7.2f} us per request (best of {args.rounds} x {args.requests})")
    print(f"{'difference':28s} {(best['sluicegate (head limits)'] - base) * 1e6:+7.2f} us per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
