"""A fast OpenAI-compatible mock upstream (and a 200-answering telemetry receiver) on loopback.

A raw ``asyncio.Protocol`` HTTP/1.1 server on uvloop: keep-alive, pipelining-safe buffering, Content-Length and
chunked request bodies, and every response body precomputed, so it is never the bottleneck of a benchmark
(it answers ~10x what the gateway can on the same core; see bench/README.md).

Modes:
- ``upstream`` (default): every wire format in :data:`WIRES`, matched on the request's path (first match wins):
  - ``anthropic``: ``POST /v1/messages`` answers an Anthropic message with usage, or with ``"stream": true`` the
    Messages API's SSE events (``message_start``, ``content_block_start``, ``ping``, a ``content_block_delta`` per
    word, ``content_block_stop``, ``message_delta``, ``message_stop``);
  - ``azure``: ``POST /openai/deployments/{deployment}/chat/completions?api-version=...`` (and the v1 API's
    ``/openai/v1/chat/completions``) answers OpenAI's completion or stream with Azure's additions
    (``prompt_filter_results``, per-choice ``content_filter_results``, the leading filter-results chunk);
  - ``gemini``: ``POST /v1beta/models/{model}:generateContent`` answers a ``GenerateContentResponse`` (one
    candidate, ``usageMetadata``); ``:streamGenerateContent?alt=sse`` answers its SSE events, one per word,
    the last with ``finishReason`` and ``usageMetadata``;
  - ``bedrock``: ``POST /model/{modelId}/converse`` answers a Converse response with usage;
    ``.../converse-stream`` answers ``application/vnd.amazon.eventstream`` messages (``messageStart``, a
    ``contentBlockDelta`` per word, ``contentBlockStop``, ``messageStop``, ``metadata`` with usage), framed
    with their CRCs once at import. The SigV4 signature is not checked: the row measures the gateway signing;
  - ``openai``: ``POST /v1/chat/completions`` and ``/chat/completions`` answer a fixed completion with usage, or,
    when the body has ``"stream": true``, an SSE stream (role chunk, content chunks, a finish chunk, a usage
    chunk, ``[DONE]``).
  Every format answers the same text in the same number of chunks, so rows differ only by translation.
  ``GET /v1/models`` lists one model; anything else is a JSON 404. Another provider's row adds its answer
  bytes and one entry in :data:`WIRES`, and its model in ``bench/run.py``'s ``PROVIDER_MODELS``.
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
import struct
import sys
import zlib
from collections.abc import Callable

__all__ = ("COMPLETION", "WIRES", "main", "serve")

MODEL = "mock-gpt"
CONTENT = "Hello from the sluicegate bench mock upstream."
COMPLETION = json.dumps({
    "id": "chatcmpl-bench0000000000000000000", "object": "chat.completion", "created": 1700000000,
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": CONTENT}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17},
}, separators=(",", ":")).encode()


def _sse_events() -> list[bytes]:
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
    return events


def _response(status: str, content_type: bytes, body: bytes, close: bool = False) -> bytes:
    head = (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n")
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


def _stream_response(events: list[bytes], content_type: bytes = b"text/event-stream") -> bytes:
    """A streamed answer: one HTTP chunk per event, all written at once (no wait between tokens)."""
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n")


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# Anthropic's Messages API (shapes as the anthropic SDK types them)
ANTHROPIC_MODEL = "claude-sonnet-4-5"
_ANTHROPIC_USAGE = {"input_tokens": 9, "output_tokens": 8, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0, "service_tier": "standard"}
ANTHROPIC_MESSAGE = _compact({
    "id": "msg_bench0000000000000000000", "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
    "content": [{"type": "text", "text": CONTENT}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": _ANTHROPIC_USAGE})


def _anthropic_events() -> list[bytes]:
    def event(name: str, data: object) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + _compact(data) + b"\n\n"

    events = [event("message_start", {"type": "message_start", "message": {
        "id": "msg_bench0000000000000000000", "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**_ANTHROPIC_USAGE, "output_tokens": 1}}}),
        event("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}}),
        event("ping", {"type": "ping"})]
    for index, word in enumerate(CONTENT.split(" ")):
        events.append(event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "text_delta", "text": word if index == 0 else " " + word}}))
    events += [event("content_block_stop", {"type": "content_block_stop", "index": 0}),
               event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                          "stop_sequence": None},
                                       "usage": {"output_tokens": 8}}),
               event("message_stop", {"type": "message_stop"})]
    return events


# Azure OpenAI: OpenAI's shapes plus the content-filter results Azure adds
_FILTERS = {name: {"filtered": False, "severity": "safe"} for name in ("hate", "self_harm", "sexual", "violence")}
AZURE_COMPLETION = _compact({
    **json.loads(COMPLETION),
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _FILTERS}],
    "choices": [{"index": 0, "message": {"role": "assistant", "content": CONTENT}, "finish_reason": "stop",
                 "content_filter_results": _FILTERS}]})


def _azure_events() -> list[bytes]:
    first = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
             "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _FILTERS}]}
    return [b"data: " + _compact(first) + b"\n\n", *_sse_events()]


# Gemini API (generateContent / streamGenerateContent?alt=sse; shapes as google-genai types them)
GEMINI_MODEL = "gemini-2.5-flash"
_GEMINI_USAGE = {"promptTokenCount": 9, "candidatesTokenCount": 8, "totalTokenCount": 17,
                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}]}


def _gemini_event(text: str, last: bool) -> dict[str, object]:
    candidate: dict[str, object] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    event: dict[str, object] = {"candidates": [candidate], "modelVersion": GEMINI_MODEL,
                                "responseId": "bench0000000000000000000"}
    if last:
        candidate["finishReason"] = "STOP"
        event["usageMetadata"] = _GEMINI_USAGE
    return event


GEMINI_RESPONSE = _compact(_gemini_event(CONTENT, True))


def _gemini_events() -> list[bytes]:
    words = CONTENT.split(" ")
    # Google ends each event with CRLF CRLF
    return [b"data: " + _compact(_gemini_event(word if index == 0 else " " + word, index == len(words) - 1))
            + b"\r\n\r\n" for index, word in enumerate(words)]


# Amazon Bedrock's Converse API and its event stream (application/vnd.amazon.eventstream)
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
_BEDROCK_USAGE = {"inputTokens": 9, "outputTokens": 8, "totalTokens": 17}
BEDROCK_RESPONSE = _compact({
    "output": {"message": {"role": "assistant", "content": [{"text": CONTENT}]}}, "stopReason": "end_turn",
    "usage": _BEDROCK_USAGE, "metrics": {"latencyMs": 1}})


def _eventstream_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (lengths, CRC), string headers (type 7), payload, CRC."""
    encoded = b"".join(struct.pack(">B", len(k)) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode()))
                       + v.encode() for k, v in headers.items())
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _bedrock_frames() -> list[bytes]:
    def event(kind: str, data: object) -> bytes:
        return _eventstream_frame({":event-type": kind, ":content-type": "application/json",
                                   ":message-type": "event"}, _compact(data))

    frames = [event("messageStart", {"role": "assistant"})]
    for index, word in enumerate(CONTENT.split(" ")):
        frames.append(event("contentBlockDelta", {"contentBlockIndex": 0,
                                                  "delta": {"text": word if index == 0 else " " + word}}))
    frames += [event("contentBlockStop", {"contentBlockIndex": 0}),
               event("messageStop", {"stopReason": "end_turn"}),
               event("metadata", {"usage": _BEDROCK_USAGE, "metrics": {"latencyMs": 1}})]
    return frames


def _embeddings(dimensions: int = 1536) -> bytes:
    """text-embedding-3-small's answer to one input: a 1,536-float vector, base64 (the SDKs' default)."""
    import base64

    vector = struct.pack(f"<{dimensions}f", *(((i * 7919) % 1000) / 1000 - 0.5 for i in range(dimensions)))
    return json.dumps({"object": "list", "model": "text-embedding-3-small", "data": [
        {"object": "embedding", "index": 0, "embedding": base64.b64encode(vector).decode()}],
        "usage": {"prompt_tokens": 7, "total_tokens": 7}}, separators=(",", ":")).encode()


RESP_COMPLETION = _response("200 OK", b"application/json", COMPLETION)
RESP_EMBEDDINGS = _response("200 OK", b"application/json", _embeddings())
RESP_STREAM = _stream_response(_sse_events())
RESP_ANTHROPIC = _response("200 OK", b"application/json", ANTHROPIC_MESSAGE)
RESP_ANTHROPIC_STREAM = _stream_response(_anthropic_events())
RESP_AZURE = _response("200 OK", b"application/json", AZURE_COMPLETION)
RESP_AZURE_STREAM = _stream_response(_azure_events())
RESP_GEMINI = _response("200 OK", b"application/json", GEMINI_RESPONSE)
RESP_GEMINI_STREAM = _stream_response(_gemini_events())
RESP_BEDROCK = _response("200 OK", b"application/json", BEDROCK_RESPONSE)
RESP_BEDROCK_STREAM = _stream_response(_bedrock_frames(), b"application/vnd.amazon.eventstream")
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


def _by_stream_flag(completion: bytes, stream: bytes) -> Callable[[bytes, bytes], bytes]:
    """An answer chosen by the body's ``"stream": true`` (OpenAI, Azure, Anthropic)."""
    return lambda path, body: stream if _STREAM_TRUE.search(body) else completion


WIRES: list[tuple[str, Callable[[bytes], bool], Callable[[bytes, bytes], bytes]]] = [
    # (name, does this request path belong to it, (path, body) -> the whole HTTP response); first match wins
    ("anthropic", lambda path: path.startswith(b"/v1/messages"),
     _by_stream_flag(RESP_ANTHROPIC, RESP_ANTHROPIC_STREAM)),
    ("azure", lambda path: path.startswith((b"/openai/deployments/", b"/openai/v1/chat/completions")),
     _by_stream_flag(RESP_AZURE, RESP_AZURE_STREAM)),
    ("gemini", lambda path: path.startswith(b"/v1beta/models/"),
     lambda path, body: RESP_GEMINI_STREAM if b":streamGenerateContent" in path else RESP_GEMINI),
    ("bedrock", lambda path: path.startswith(b"/model/"),
     lambda path, body: RESP_BEDROCK_STREAM if path.endswith(b"/converse-stream") else RESP_BEDROCK),
    ("openai", lambda path: path.endswith(b"/chat/completions"), _by_stream_flag(RESP_COMPLETION, RESP_STREAM)),
    ("embeddings", lambda path: path.endswith(b"/embeddings"), lambda path, body: RESP_EMBEDDINGS),
]
"""The wire formats the mock speaks. A new provider's row adds its precomputed answers and one entry here."""


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
        line = head[:head.find(b"\r\n")]
        if head.startswith(b"POST "):
            path = line.split(b" ", 2)[1] if line.count(b" ") >= 2 else b""
            for _name, matches, answer in WIRES:
                if matches(path):
                    return answer(path, body)
        if head.startswith(b"GET ") and b"/models" in line:
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
