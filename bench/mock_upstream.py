"""A fast OpenAI-compatible mock upstream (and a 200-answering telemetry receiver) on loopback.

A raw ``asyncio.Protocol`` HTTP/1.1 server on uvloop: keep-alive, pipelining-safe buffering, Content-Length and
chunked request bodies, and every response body precomputed, so it is never the bottleneck of a benchmark
(it answers ~10x what the gateway can on the same core; see bench/README.md).

Modes:
- ``upstream`` (default): ``POST /v1/chat/completions`` and ``/chat/completions`` answer a fixed completion
  with usage, or, when the body has ``"stream": true``, an SSE stream (role chunk, content chunks, a finish
  chunk, a usage chunk, ``[DONE]``); ``GET /v1/models`` lists one model; anything else is a JSON 404.
- ``receiver``: every request is answered ``200`` with an empty ``application/x-protobuf`` body (an empty
  ``ExportTraceServiceResponse``), standing in for Langfuse's OTLP endpoint and an OTel collector. It counts
  requests and bytes and reports them on ``GET /stats``.

Run: ``python -m bench.mock_upstream --port 18001 [--mode receiver]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys

__all__ = ("COMPLETION", "main", "serve")

MODEL = "mock-gpt"
CONTENT = "Hello from the sluicegate bench mock upstream."
COMPLETION = json.dumps({
    "id": "chatcmpl-bench0000000000000000000", "object": "chat.completion", "created": 1700000000,
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": CONTENT}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17},
}, separators=(",", ":")).encode()


def _sse_body() -> bytes:
    base = {"id": "chatcmpl-bench0000000000000000000", "object": "chat.completion.chunk", "created": 1700000000,
            "model": MODEL}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]}]
    for index, word in enumerate(CONTENT.split(" ")):
        chunks.append({**base, "choices": [{"index": 0, "delta": {"content": word if index == 0 else " " + word},
                                            "finish_reason": None}]})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 8,
                                                     "total_tokens": 17}})
    events = [b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n" for c in chunks]
    events.append(b"data: [DONE]\n\n")
    # One HTTP chunk per SSE event, all written at once: the mock never waits between tokens.
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


def _response(status: str, content_type: bytes, body: bytes, close: bool = False) -> bytes:
    head = (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n")
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


RESP_COMPLETION = _response("200 OK", b"application/json", COMPLETION)
RESP_STREAM = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + _sse_body())
RESP_MODELS = _response("200 OK", b"application/json", json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}).encode())
RESP_404 = _response("404 Not Found", b"application/json",
                     b'{"error":{"message":"no such route","type":"not_found_error","param":null,"code":"404"}}')
RESP_400 = _response("400 Bad Request", b"application/json",
                     b'{"error":{"message":"bad request","type":"invalid_request_error","param":null,"code":"400"}}',
                     close=True)
RESP_RECEIVER = _response("200 OK", b"application/x-protobuf", b"")
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


class _Stats:
    __slots__ = ("bytes", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0


class HttpProtocol(asyncio.Protocol):
    """One connection: parse as many complete requests as the buffer holds, answer each in order."""

    __slots__ = ("buffer", "mode", "stats", "transport")

    def __init__(self, mode: str, stats: _Stats) -> None:
        self.mode = mode
        self.stats = stats
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        out = []
        while buffer:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    return self._fail(out)
                break
            head = buffer[:end]
            lower = head.lower()
            start = end + 4
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                eol = lower.find(b"\r\n", at + 17)
                try:
                    length = int(lower[at + 17:eol if eol >= 0 else len(lower)])
                except ValueError:
                    return self._fail(out)
                if length > _MAX_BODY:
                    return self._fail(out)
                if len(buffer) < start + length:
                    break
                body = buffer[start:start + length]
                buffer = buffer[start + length:]
            elif b"\r\ntransfer-encoding: chunked" in lower:
                parsed = _dechunk(buffer, start)
                if parsed is None:
                    if len(buffer) > _MAX_BODY:
                        return self._fail(out)
                    break
                body, consumed = parsed
                buffer = buffer[consumed:]
            else:
                body = b""
                buffer = buffer[start:]
            out.append(self._answer(head, body))
            if b"\r\nconnection: close" in lower:
                buffer = b""
                self._flush(out)
                assert self.transport is not None
                self.transport.close()
                return None
        self.buffer = buffer
        self._flush(out)
        return None

    def _answer(self, head: bytes, body: bytes) -> bytes:
        if self.mode == "receiver":
            if head.startswith(b"GET /stats "):
                return _response("200 OK", b"application/json", json.dumps(
                    {"requests": self.stats.requests, "bytes": self.stats.bytes}).encode())
            self.stats.requests += 1
            self.stats.bytes += len(body)
            return RESP_RECEIVER
        self.stats.requests += 1
        self.stats.bytes += len(body)
        if head.startswith(b"POST ") and b"/chat/completions" in head[:head.find(b"\r\n")]:
            return RESP_STREAM if _STREAM_TRUE.search(body) else RESP_COMPLETION
        if head.startswith(b"GET ") and b"/models" in head[:head.find(b"\r\n")]:
            return RESP_MODELS
        return RESP_404

    def _flush(self, out: list[bytes]) -> None:
        if out and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _fail(self, out: list[bytes]) -> None:
        out.append(RESP_400)
        self._flush(out)
        self.buffer = b""
        if self.transport is not None:
            self.transport.close()


def _dechunk(buffer: bytes, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``start``; ``None`` until it is complete."""
    parts = []
    pos = start
    while True:
        eol = buffer.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buffer[pos:eol].split(b";")[0] or b"0", 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", eol)
            if trailer_end == eol:  # no trailers: "0\r\n\r\n"
                return b"".join(parts), eol + 4
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 4
        if len(buffer) < eol + 2 + size + 2:
            return None
        parts.append(buffer[eol + 2:eol + 2 + size])
        pos = eol + 2 + size + 2


async def serve(host: str, port: int, mode: str, ready_file: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    stats = _Stats()
    server = await loop.create_server(lambda: HttpProtocol(mode, stats), host, port, backlog=4096,
                                      reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock {mode} listening on http://{host}:{port}", flush=True)
    if ready_file:
        with open(ready_file, "w") as handle:
            handle.write("ready")
    async with server:
        await stop.wait()
    print(f"mock {mode}: {stats.requests} requests, {stats.bytes} body bytes", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fast OpenAI-compatible mock upstream / 200 receiver.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument("--mode", choices=("upstream", "receiver"), default="upstream")
    parser.add_argument("--ready-file", default=None)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the mock binds loopback only")
    try:
        import uvloop
    except ImportError:  # plain asyncio still works, only slower
        asyncio.run(serve(args.host, args.port, args.mode, args.ready_file))
    else:
        uvloop.run(serve(args.host, args.port, args.mode, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
