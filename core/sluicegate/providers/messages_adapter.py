"""Anthropic's Messages API in front of an OpenAI chat provider: requests, answers and streams translated.

``/v1/messages`` serves every configured model. A provider that speaks the Messages API itself (Anthropic, Claude
on Vertex AI and Bedrock) gets the request as it came (:meth:`Provider.messages_bytes`); every other provider is
reached through its chat contract, with the request translated here as LiteLLM's Anthropic adapter does it:

- ``system`` (a string or text blocks) → one system message; ``messages`` → OpenAI messages: text and image blocks
  (base64 → ``data:`` URLs, ``url`` sources → ``image_url``) as content parts, ``tool_use`` blocks → the assistant's
  ``tool_calls``, ``tool_result`` blocks → ``tool`` messages (placed first in their turn, as OpenAI requires);
  ``thinking`` blocks of earlier turns are Anthropic's own and are not sent;
- ``tools`` → functions, ``tool_choice`` (``auto``/``any``/``tool``/``none``, ``disable_parallel_tool_use``),
  ``stop_sequences`` → ``stop``, ``metadata.user_id`` → ``user``, ``max_tokens``, ``temperature``, ``top_p``;
- ``thinking`` (a budget for Claude's extended thinking) has no chat equivalent and is not sent: the model's own
  reasoning settings apply. ``cache_control`` marks are Anthropic's prompt caching and are not sent either.

Answers come back as an Anthropic ``message`` (text, ``tool_use`` blocks, a ``thinking`` block for a
``reasoning_content``; ``finish_reason`` → ``stop_reason``; usage with cached prompt tokens as
``cache_read_input_tokens``); streams as Anthropic's server-sent events, each translated as its chunk arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from sluicegate.errors import ApiError

__all__ = ("STOP_REASONS", "MessageAssembler", "StreamTranslator", "anthropic_usage", "chat_request",
           "message_from_chat", "openai_usage", "sse_event")

_json = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
"""OpenAI ``finish_reason`` → Anthropic ``stop_reason`` (LiteLLM's mapping; ``refusal`` is Anthropic's name)."""

TRANSLATED_KEYS = frozenset({"model", "messages", "system", "max_tokens", "metadata", "stop_sequences", "stream",
                             "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier"})
"""Request keys the translation knows; any other is a 400 naming it (``container``, ``mcp_servers``...)."""


def _text_of(content: Any, where: str) -> str:
    """Text blocks (or a string) as one string; other block types are refused by name."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: expected a string or an array of text blocks", param=where.split(".")[0])
    texts = []
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ApiError(400, f"{where}: block type {kind!r} cannot be sent to this model (text only)",
                           param=where.split(".")[0])
        texts.append(block["text"])
    return "\n".join(texts)


def _image_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") or "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{source['data']}"}}
    if kind == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise ApiError(400, f"{where}: an image needs source {{type: base64, media_type, data}} or {{type: url, url}}",
                   param="messages")


def _tool_result_text(content: Any, where: str) -> tuple[str, list[dict[str, Any]]]:
    """A tool_result's content as the tool message's text, and its images (sent in a user message after it)."""
    if isinstance(content, str) or content is None:
        return content or "", []
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content: expected a string or an array of blocks", param="messages")
    texts, images = [], []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "image":
            images.append(_image_part(block, where))
        else:
            raise ApiError(400, f"{where}.content: block type {kind!r} cannot be sent to this model",
                           param="messages")
    return "\n".join(texts), images


def _arguments(value: Any) -> str:
    return _json.encode(value if value is not None else {}).decode()


def _messages(messages: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for n, message in enumerate(messages):
        where = f"messages.{n}"
        role, content = message["role"], message["content"]
        if isinstance(content, str):
            result.append({"role": role, "content": content})
            continue
        if role == "assistant":
            texts: list[str] = []
            calls: list[dict[str, Any]] = []
            for block in content:
                kind = block.get("type")
                if kind == "text":
                    texts.append(str(block.get("text") or ""))
                elif kind == "tool_use":
                    calls.append({"id": block.get("id"), "type": "function",
                                  "function": {"name": block.get("name"), "arguments": _arguments(block.get("input"))}})
                elif kind in ("thinking", "redacted_thinking"):
                    continue  # Claude's own reasoning of an earlier turn: no chat equivalent
                else:
                    raise ApiError(400, f"{where}: assistant block type {kind!r} cannot be sent to this model",
                                   param="messages")
            reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
            if calls:
                reply["tool_calls"] = calls
            result.append(reply)
            continue
        tools: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        for block in content:
            kind = block.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": str(block.get("text") or "")})
            elif kind == "image":
                parts.append(_image_part(block, where))
            elif kind == "tool_result":
                text, images = _tool_result_text(block.get("content"), where)
                if block.get("is_error") and text:
                    text = f"Error: {text}"
                tools.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
                parts.extend(images)
            else:
                raise ApiError(400, f"{where}: user block type {kind!r} cannot be sent to this model",
                               param="messages")
        result.extend(tools)  # tool messages follow the assistant's tool calls directly
        if parts:
            plain = all(p["type"] == "text" for p in parts)
            result.append({"role": "user", "content": "\n".join(p["text"] for p in parts) if plain and len(parts) == 1
                           else parts})
    return result


def _tools(tools: Any) -> list[dict[str, Any]]:
    converted = []
    for n, tool in enumerate(tools):
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise ApiError(400, f"tools.{n}: Anthropic's server tool {kind!r} cannot be served by this model's "
                                "provider (only custom tools with input_schema translate)", param="tools")
        function: dict[str, Any] = {"name": tool.get("name"),
                                    "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
        if tool.get("description"):
            function["description"] = tool["description"]
        converted.append({"type": "function", "function": function})
    return converted


def chat_request(body: Mapping[str, Any], supported: frozenset[str] | None = None) -> dict[str, Any]:
    """A checked Messages request (:func:`sluicegate.api.messages.check_body`) as an OpenAI chat request.

    ``supported`` is the provider's ``supported_params``: ``metadata.user_id`` becomes ``user`` only for a provider
    that takes it (it is Anthropic's abuse-tracking id; the log event has it as ``end_user`` either way)."""
    unknown = sorted(k for k in body if k not in TRANSLATED_KEYS)
    if unknown:
        raise ApiError(400, f"{', '.join(unknown)}: not supported for this model (its provider is reached through "
                            "OpenAI's chat format)", param=unknown[0])
    messages = _messages(body["messages"])
    system = body.get("system")
    if system:
        messages.insert(0, {"role": "system", "content": _text_of(system, "system")})
    request: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    for key in ("temperature", "top_p", "top_k", "service_tier"):
        if body.get(key) is not None:
            request[key] = body[key]
    if body.get("stop_sequences"):
        request["stop"] = body["stop_sequences"]
    tools = body.get("tools")
    if tools:
        request["tools"] = _tools(tools)
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "auto":
            request["tool_choice"] = "auto"
        elif kind == "any":
            request["tool_choice"] = "required"
        elif kind == "none":
            request["tool_choice"] = "none"
        elif kind == "tool":
            request["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        if choice.get("disable_parallel_tool_use") and tools:
            request["parallel_tool_calls"] = False
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id") and (supported is None or "user" in supported):
        request["user"] = str(metadata["user_id"])
    if body.get("stream"):
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return request


# answers -------------------------------------------------------------------------------------------------
def anthropic_usage(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """OpenAI usage → Anthropic's: cached prompt tokens are ``cache_read_input_tokens``, not input tokens."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    cached = int((details.get("cached_tokens") if isinstance(details, dict) else 0) or 0)
    created = int(usage.get("cache_creation_input_tokens") or 0)
    return {"input_tokens": max(prompt - cached - created, 0), "output_tokens": int(usage.get("completion_tokens") or 0),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": created}


def openai_usage(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """Anthropic usage → OpenAI's, as LiteLLM maps it (what costs and events count): cache reads and writes are
    prompt tokens too."""
    usage = usage or {}
    fresh = int(usage.get("input_tokens") or 0)
    read = int(usage.get("cache_read_input_tokens") or 0)
    created = int(usage.get("cache_creation_input_tokens") or 0)
    output = int(usage.get("output_tokens") or 0)
    prompt = fresh + read + created
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": created},
            "cache_read_input_tokens": read, "cache_creation_input_tokens": created}


def _tool_input(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = _decoder.decode(arguments or "{}")
    except (msgspec.DecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def message_from_chat(answer: Mapping[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic ``message``."""
    choices = answer.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    reply = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = reply.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = reply.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in reply.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                        "input": _tool_input(function.get("arguments"))})
    stop = STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn")
    if stop == "tool_use" and not reply.get("tool_calls"):
        stop = "end_turn"
    return {"id": answer.get("id") or "msg_sluicegate", "type": "message", "role": "assistant",
            "model": answer.get("model") or model, "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": anthropic_usage(answer.get("usage"))}


# streams -------------------------------------------------------------------------------------------------
def sse_event(event: Mapping[str, Any]) -> bytes:
    """One Anthropic server-sent event: ``event:`` (its ``type``), then its JSON as ``data:``."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + _json.encode(event) + b"\n\n"


class StreamTranslator:
    """OpenAI ``chat.completion.chunk`` dicts → Anthropic stream events (dicts), one chunk at a time.

    Blocks open as their first delta arrives (thinking, text, each tool call) and close when another starts; the
    ``message_delta`` with ``stop_reason`` and the final usage is sent at the end of the stream (the usage chunk
    comes last in OpenAI's streams), then ``message_stop``.
    """

    __slots__ = ("finish_reason", "id", "index", "kind", "model", "started", "tool_blocks", "usage")

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = "msg_sluicegate"
        self.started = False
        self.index = -1  # the open content block's index (-1: none open yet)
        self.kind: str | None = None  # the open block's type
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool_calls index -> content block index
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _start(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        self.started = True
        self.id = str(chunk.get("id") or self.id)
        self.model = str(chunk.get("model") or self.model)
        message = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def _open(self, kind: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self.index += 1
        self.kind = kind
        events.append({"type": "content_block_start", "index": self.index, "content_block": block})
        return events

    def _close(self) -> list[dict[str, Any]]:
        if self.kind is None:
            return []
        self.kind = None
        return [{"type": "content_block_stop", "index": self.index}]

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self.index, "delta": delta}

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = [] if self.started else self._start(chunk)
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                if self.kind != "thinking":
                    events += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                events.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.kind != "text":
                    events += self._open("text", {"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                position = int(call.get("index") or 0)
                function = call.get("function") or {}
                if position not in self.tool_blocks:
                    events += self._open("tool_use", {"type": "tool_use", "id": call.get("id"),
                                                      "name": function.get("name") or "", "input": {}})
                    self.tool_blocks[position] = self.index
                arguments = function.get("arguments")
                if arguments:
                    if self.tool_blocks[position] != self.index:  # interleaved calls: Anthropic's blocks are sequential
                        raise ApiError(502, "upstream interleaved the arguments of parallel tool calls",
                                       type="upstream_error", code="502")
                    events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def end(self) -> list[dict[str, Any]]:
        """The closing events, once the upstream's stream has ended."""
        events = [] if self.started else self._start({})
        events += self._close()
        stop = STOP_REASONS.get(self.finish_reason or "stop", "end_turn")
        if stop == "tool_use" and not self.tool_blocks:
            stop = "end_turn"
        events.append({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                       "usage": anthropic_usage(self.usage)})
        events.append({"type": "message_stop"})
        return events


class MessageAssembler:
    """Anthropic stream events → the ``message`` they describe (for the log event), fed as events are relayed."""

    __slots__ = ("blocks", "error", "message", "stopped", "usage")

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.blocks: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] = {}
        self.stopped = False
        self.error: str | None = None

    def feed(self, data: bytes) -> None:
        """One event's ``data:`` bytes as the upstream sent them."""
        try:
            event = _decoder.decode(data)
        except msgspec.DecodeError:
            return
        if isinstance(event, dict):
            self.feed_event(event)

    def feed_event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":
            block = self.blocks.get(int(event.get("index") or 0))
            delta = event.get("delta") or {}
            if block is None or not isinstance(delta, dict):
                return
            dtype = delta.get("type")
            if dtype == "text_delta":
                block["text"] = block.get("text", "") + str(delta.get("text") or "")
            elif dtype == "input_json_delta":
                block["_json"] = block.get("_json", "") + str(delta.get("partial_json") or "")
            elif dtype == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + str(delta.get("thinking") or "")
            elif dtype == "signature_delta":
                block["signature"] = str(delta.get("signature") or "")
        elif kind == "content_block_start":
            block = event.get("content_block")
            if isinstance(block, dict):
                self.blocks[int(event.get("index") or 0)] = dict(block)
        elif kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self.message = dict(message)
                self.usage.update({k: v for k, v in (message.get("usage") or {}).items() if v is not None})
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            if self.message is not None and isinstance(delta, dict):
                self.message.update({k: v for k, v in delta.items() if k in ("stop_reason", "stop_sequence")})
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            error = event.get("error") or {}
            self.error = str(error.get("message") if isinstance(error, dict) else error) or "stream error"

    def result(self) -> dict[str, Any]:
        message = dict(self.message or {"type": "message", "role": "assistant"})
        content = []
        for index in sorted(self.blocks):
            block = dict(self.blocks[index])
            partial = block.pop("_json", None)
            if partial is not None:
                block["input"] = _tool_input(partial)
            content.append(block)
        message["content"] = content
        message["usage"] = dict(self.usage)
        return message
