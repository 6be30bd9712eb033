"""Anthropic (``anthropic/<model>``): OpenAI chat requests translated to the Messages API and back.

``POST {api_base}/v1/messages`` with ``x-api-key`` and ``anthropic-version``. System messages are lifted into
``system``; ``max_tokens`` defaults as in LiteLLM (``DEFAULT_ANTHROPIC_CHAT_MAX_TOKENS``, else 4096); tools,
``tool_choice`` and ``parallel_tool_calls``; images from data URLs (base64) and http(s) URLs; ``stop_reason`` and
usage (cache read and creation tokens included) mapped as LiteLLM maps them. A stream's events are translated
one by one as they arrive: nothing is buffered beyond the event being read.

``response_format`` as LiteLLM maps it: a ``json_schema`` for a model with structured outputs (Sonnet 4.5 and 4.6,
Opus 4.1 and later) becomes Anthropic's ``output_config.format``; for other models, and for ``json_object``, a
forced tool named ``json_tool_call`` whose input comes back as the message's content. Extended thinking:
``thinking`` passes through, ``reasoning_effort`` becomes a thinking budget (LiteLLM's budgets), and thinking
comes back as ``reasoning_content`` plus ``thinking_blocks`` (with their signatures, to send back on the next
turn), in answers and stream deltas.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import msgspec

from sluicegate.errors import ApiError
from sluicegate.net.http import encode_headers
from sluicegate.providers.anthropic_schema import structured_output_schema, tool_input_schema
from sluicegate.providers.base import (Provider, ProviderParams, UpstreamError, request_id_header,
                                      tool_call_arguments)

__all__ = ("AnthropicParams", "AnthropicProvider", "effort_thinking")

_json = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
RESPONSE_FORMAT_TOOL_NAME = "json_tool_call"  # LiteLLM's name for the forced tool of response_format
# LiteLLM's thinking budgets per reasoning_effort (its DEFAULT_REASONING_EFFORT_*_THINKING_BUDGET, same env names);
# "minimal" is raised to Anthropic's minimum budget of 1024, as LiteLLM does.
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192}
# Models that take Anthropic's structured outputs (LiteLLM's list); others get the forced tool.
STRUCTURED_OUTPUT_MODELS = ("sonnet-4.5", "sonnet-4-5", "sonnet-4.6", "sonnet-4-6", "sonnet_4.6", "sonnet_4_6",
                            "opus-4.1", "opus-4-1", "opus-4.5", "opus-4-5", "opus-4.6", "opus-4-6", "opus-4.7",
                            "opus-4-7")

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "pause_turn": "stop", "refusal": "content_filter", "model_context_window_exceeded": "length"}

ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}


def thinking_budgets() -> dict[str, int]:
    """The thinking budget per ``reasoning_effort``: LiteLLM's, or its environment variables' when set."""
    budgets = {effort: int(os.environ.get(f"DEFAULT_REASONING_EFFORT_{effort.upper()}_THINKING_BUDGET") or budget)
               for effort, budget in THINKING_BUDGETS.items()}
    budgets["minimal"] = max(budgets["minimal"], 1024)
    return budgets


class AnthropicParams(ProviderParams, frozen=True, kw_only=True, forbid_unknown_fields=True):
    extra_headers: dict[str, str] | None = None
    """Headers added to every upstream request (``anthropic-beta``, say)."""


class AnthropicProvider(Provider):
    custom_llm_provider: ClassVar[str] = "anthropic"
    Params = AnthropicParams
    default_api_base: ClassVar[str | None] = "https://api.anthropic.com"
    api_base_env: ClassVar[tuple[str, ...]] = ("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL")
    api_key_env: ClassVar[tuple[str, ...]] = ("ANTHROPIC_API_KEY",)
    api_key_required: ClassVar[bool] = True
    # The Messages API as the official SDK types it (anthropic 2.16) takes no sampling parameters: temperature,
    # top_p and top_k are refused like any other unsupported key (or dropped with drop_params).
    supported_params: ClassVar[frozenset[str] | None] = frozenset({
        "max_tokens", "max_completion_tokens", "stop", "tools", "tool_choice", "parallel_tool_calls", "user", "n",
        "response_format", "reasoning_effort", "thinking"})
    params: AnthropicParams

    def __init__(self, deployment: Any, params: ProviderParams) -> None:
        super().__init__(deployment, params)
        base = (deployment.api_base or "").rstrip("/")
        self.url = self.stream_url = base if base.endswith("/v1/messages") else f"{base}/v1/messages"
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION,
                   "x-api-key": deployment.api_key or ""}
        headers.update(self.params.extra_headers or {})
        # the configured anthropic-beta is merged with a /v1/messages client's own (one header line)
        self.beta = next((headers.pop(k) for k in list(headers) if k.lower() == "anthropic-beta"), None)
        if self.beta:
            self._head_beta = encode_headers(headers)
            headers["anthropic-beta"] = self.beta
        self._head = encode_headers(headers)
        if not self.beta:
            self._head_beta = self._head
        self.default_max_tokens = int(os.environ.get("DEFAULT_ANTHROPIC_CHAT_MAX_TOKENS") or DEFAULT_MAX_TOKENS)
        self.thinking_budgets = thinking_budgets()
        self.structured_outputs = any(name in deployment.upstream_model for name in STRUCTURED_OUTPUT_MODELS)

    def accepted(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("n") not in (None, 1):  # one answer per request is all the Messages API gives
            if not self.deployment.drop_params:
                raise ApiError(400, "anthropic does not support n > 1; remove it, or set drop_params: true",
                               param="n", code="unsupported_params")
            body = {k: v for k, v in body.items() if k != "n"}
        return super().accepted(body)

    # errors -------------------------------------------------------------------------------------------
    def error_from(self, status: int, content: bytes) -> UpstreamError:
        message, etype = f"upstream anthropic returned HTTP {status}", "upstream_error"
        try:
            data = _decoder.decode(content)
        except (msgspec.DecodeError, UnicodeDecodeError):
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            etype = str(error.get("type") or etype)
        return UpstreamError(status, message, type=etype, code=str(status))

    # request ------------------------------------------------------------------------------------------
    def translate_request(self, body: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
        system, messages = _messages(body.get("messages") or [])
        request: dict[str, Any] = {"model": self.deployment.upstream_model, "messages": messages}
        if system:
            plain = all(set(block) == {"type", "text"} for block in system)
            request["system"] = "\n".join(b["text"] for b in system) if plain and len(system) == 1 else system
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        thinking = self._thinking(body)
        if thinking is not None:
            request["thinking"] = thinking
        budget = thinking.get("budget_tokens") if thinking and thinking.get("type") == "enabled" else None
        if max_tokens:
            request["max_tokens"] = int(max_tokens)
        else:  # as LiteLLM: room for the thinking budget on top of the default answer length
            request["max_tokens"] = self.default_max_tokens + (int(budget) if isinstance(budget, int) else 0)
        stop = body.get("stop")
        if stop:
            if not (isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
                raise ApiError(400, "stop: expected a string or a list of strings", param="stop")
            request["stop_sequences"] = [stop] if isinstance(stop, str) else stop
        tools = body.get("tools")
        if tools:
            request["tools"] = [_tool(t) for t in tools]
        choice = _tool_choice(body.get("tool_choice"))
        json_tool = self._response_format(body.get("response_format"), request)
        if json_tool is not None:
            request.setdefault("tools", []).append(json_tool)
            if thinking is None or thinking.get("type") == "disabled":  # thinking cannot be combined with a forced tool
                choice = {"type": "tool", "name": RESPONSE_FORMAT_TOOL_NAME}
        if body.get("parallel_tool_calls") is False and (tools or choice):
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice is not None:
            request["tool_choice"] = choice
        if body.get("user"):
            request["metadata"] = {"user_id": str(body["user"])}
        if stream:
            request["stream"] = True
        return request

    def _thinking(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        thinking = body.get("thinking")
        if thinking is not None:
            if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled", "adaptive"):
                raise ApiError(400, "thinking: expected {type: enabled, budget_tokens: N}, {type: adaptive} or "
                                    "{type: disabled}", param="thinking")
            return dict(thinking)
        return effort_thinking(body, self.thinking_budgets)

    def _response_format(self, value: Any, request: dict[str, Any]) -> dict[str, Any] | None:
        """Set Anthropic's structured output on ``request``, or return the forced tool that stands for it."""
        if value is None:
            return None
        kind = value.get("type") if isinstance(value, dict) else None
        if kind == "text":
            return None
        if kind == "json_schema":
            spec = value.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise ApiError(400, "response_format: json_schema needs {json_schema: {name, schema}}",
                               param="response_format")
            if self.structured_outputs:
                request["output_config"] = {"format": {"type": "json_schema",
                                                       "schema": structured_output_schema(schema)}}
                return None
            return {"name": RESPONSE_FORMAT_TOOL_NAME, "input_schema": tool_input_schema(schema)}
        if kind == "json_object":
            return {"name": RESPONSE_FORMAT_TOOL_NAME,
                    "input_schema": {"type": "object", "properties": {}, "additionalProperties": True}}
        raise ApiError(400, "response_format: expected type text, json_object or json_schema",
                       param="response_format")

    def json_mode(self, body: Mapping[str, Any]) -> bool:
        """Whether ``body``'s response_format goes as the forced tool (whose input is then the answer's content)."""
        value = body.get("response_format")
        kind = value.get("type") if isinstance(value, dict) else None
        return kind == "json_object" or (kind == "json_schema" and not self.structured_outputs)

    def _headers(self, request_id: str) -> bytes:
        return self._head + request_id_header(request_id)

    # Anthropic's Messages API, natively (/v1/messages) ---------------------------------------------------
    def speaks_messages(self) -> bool:
        return True

    def messages_payload(self, body: dict[str, Any]) -> dict[str, Any]:
        """The client's Messages request for this upstream: only the model name changes."""
        return {**body, "model": self.deployment.upstream_model}

    def beta_header(self, beta: str | None) -> bytes:
        """``anthropic-beta``: the configured features and the client's, in one header line."""
        features = [f.strip() for value in (self.beta, beta) if value for f in value.split(",") if f.strip()]
        if not features:
            return b""
        return encode_headers({"anthropic-beta": ",".join(dict.fromkeys(features))})

    async def messages_headers(self, request_id: str, beta: str | None) -> bytes:
        return self._head_beta + self.beta_header(beta) + request_id_header(request_id)

    async def messages_bytes(self, body: dict[str, Any], request_id: str, beta: str | None) -> bytes:
        return await self.post(self.url, _json.encode(self.messages_payload(body)),
                               await self.messages_headers(request_id, beta))

    async def open_messages_stream(self, body: dict[str, Any], request_id: str, beta: str | None) -> Any:
        return await self.post_stream(self.stream_url, _json.encode(self.messages_payload(body)),
                                      await self.messages_headers(request_id, beta))

    async def count_tokens_bytes(self, body: dict[str, Any], request_id: str, beta: str | None) -> bytes:
        return await self.post(self.url + "/count_tokens", _json.encode(self.messages_payload(body)),
                               await self.messages_headers(request_id, beta))

    # answers ------------------------------------------------------------------------------------------
    async def complete(self, body: Mapping[str, Any], *, request_id: str) -> dict[str, Any]:
        request = self.translate_request(body, stream=False)
        content = await self.post(self.url, _json.encode(request), self._headers(request_id))
        try:
            message = _decoder.decode(content)
        except msgspec.DecodeError:
            raise UpstreamError(502, "upstream anthropic returned a body that is not JSON",
                                type="upstream_error", code="502") from None
        return self.translate_response(message, json_mode=self.json_mode(body))

    def translate_response(self, message: Mapping[str, Any], *, json_mode: bool = False) -> dict[str, Any]:
        texts: list[str] = []
        reasoning: list[str] = []
        thinking_blocks: list[dict[str, Any]] = []
        tool_calls: list[dict[str, Any]] = []
        for block in message.get("content") or ():
            kind = block.get("type")
            if kind == "text":
                texts.append(block.get("text") or "")
            elif kind == "thinking":
                reasoning.append(block.get("thinking") or "")
                thinking_blocks.append({"type": "thinking", "thinking": block.get("thinking") or "",
                                        "signature": block.get("signature")})
            elif kind == "redacted_thinking":
                thinking_blocks.append({"type": "redacted_thinking", "data": block.get("data")})
            elif kind == "tool_use" and json_mode and block.get("name") == RESPONSE_FORMAT_TOOL_NAME:
                texts.append(_json.encode(block.get("input") or {}).decode())  # the forced tool's input is the answer
            elif kind == "tool_use":
                tool_calls.append({"id": block.get("id"), "type": "function",
                                   "function": {"name": block.get("name"),
                                                "arguments": _json.encode(block.get("input") or {}).decode()}})
        answer: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
        if reasoning:
            answer["reasoning_content"] = "".join(reasoning)
        if thinking_blocks:
            answer["thinking_blocks"] = thinking_blocks
        if tool_calls:
            answer["tool_calls"] = tool_calls
        finish = FINISH_REASONS.get(message.get("stop_reason") or "", "stop")
        if finish == "tool_calls" and not tool_calls:
            finish = "stop"
        return {"id": message.get("id"), "object": "chat.completion", "created": int(time.time()),
                "model": message.get("model") or self.deployment.upstream_model,
                "choices": [{"index": 0, "message": answer, "finish_reason": finish}],
                "usage": _usage(message.get("usage") or {})}

    async def stream(self, body: Mapping[str, Any], *, request_id: str) -> AsyncIterator[dict[str, Any]]:
        request = self.translate_request(body, stream=True)
        response = await self.post_stream(self.url, _json.encode(request), self._headers(request_id))
        try:
            translator = _StreamTranslator(self.deployment.upstream_model, json_mode=self.json_mode(body))
            async for _event, data in self.sse_events(response):
                try:
                    event = _decoder.decode(data)
                except msgspec.DecodeError:
                    continue
                if not isinstance(event, dict):
                    continue
                for chunk in translator.feed(event):
                    yield chunk
                if translator.finished:
                    break
        finally:
            await response.aclose()


class _StreamTranslator:
    """Anthropic stream events → OpenAI chunks, one event at a time."""

    __slots__ = ("base", "model", "tool_index", "block_tools", "usage", "finished", "finish_reason", "json_mode",
                 "json_blocks")

    def __init__(self, model: str, *, json_mode: bool = False) -> None:
        self.model = model
        self.json_mode = json_mode
        self.json_blocks: set[int] = set()  # content blocks of the forced response_format tool
        self.base: dict[str, Any] = {"id": None, "object": "chat.completion.chunk", "created": int(time.time()),
                                     "model": model}
        self.tool_index = -1
        self.block_tools: dict[int, int] = {}  # content block index -> OpenAI tool_calls index
        self.usage: dict[str, Any] = {}
        self.finished = False
        self.finish_reason: str | None = None

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if dtype == "input_json_delta" and int(event.get("index", 0)) in self.json_blocks:
                return [self._chunk({"content": delta.get("partial_json", "")})]
            if dtype == "input_json_delta":
                index = self.block_tools.get(int(event.get("index", 0)), max(self.tool_index, 0))
                return [self._chunk({"tool_calls": [{"index": index, "function": {
                    "arguments": delta.get("partial_json", "")}}]})]
            if dtype == "thinking_delta":
                thinking = delta.get("thinking", "")
                return [self._chunk({"reasoning_content": thinking,
                                     "thinking_blocks": [{"type": "thinking", "thinking": thinking}]})]
            if dtype == "signature_delta":
                return [self._chunk({"reasoning_content": "", "thinking_blocks": [
                    {"type": "thinking", "thinking": "", "signature": delta.get("signature", "")}]})]
            return []
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use" and self.json_mode and block.get("name") == RESPONSE_FORMAT_TOOL_NAME:
                self.json_blocks.add(int(event.get("index", 0)))
                return []
            if block.get("type") == "redacted_thinking":
                return [self._chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": block.get("data")}]})]
            if block.get("type") == "tool_use":
                self.tool_index += 1
                self.block_tools[int(event.get("index", 0))] = self.tool_index
                return [self._chunk({"tool_calls": [{"index": self.tool_index, "id": block.get("id"),
                                                     "type": "function", "function": {
                                                         "name": block.get("name"), "arguments": ""}}]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "message_start":
            message = event.get("message") or {}
            self.base["id"] = message.get("id")
            self.base["model"] = message.get("model") or self.model
            self.usage = dict(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "message_delta":
            usage = event.get("usage") or {}
            self.usage.update({k: v for k, v in usage.items() if v is not None})  # cumulative counts
            reason = (event.get("delta") or {}).get("stop_reason")
            self.finish_reason = FINISH_REASONS.get(reason or "", "stop")
            if self.finish_reason == "tool_calls" and self.tool_index < 0:
                self.finish_reason = "stop"  # only the forced response_format tool was called
            return [self._chunk({}, self.finish_reason)]
        if kind == "message_stop":
            self.finished = True
            return [{**self.base, "choices": [], "usage": _usage(self.usage)}]
        if kind == "error":
            error = event.get("error") or {}
            etype = str(error.get("type") or "api_error")
            raise UpstreamError(ERROR_STATUS.get(etype, 500), str(error.get("message") or "anthropic stream error"),
                                type=etype, code=str(ERROR_STATUS.get(etype, 500)))
        return []  # ping, content_block_stop, and event types added later


# translation helpers ----------------------------------------------------------------------------------
def effort_thinking(body: Mapping[str, Any], budgets: Mapping[str, int]) -> dict[str, Any] | None:
    """Claude's ``thinking`` for OpenAI's ``reasoning_effort`` (a budget per effort; None for none or absent), as
    the Anthropic API and Bedrock's Claude both take it."""
    effort = body.get("reasoning_effort")
    if effort is None or effort == "none":
        return None
    if not isinstance(effort, str) or effort not in budgets:
        raise ApiError(400, f"reasoning_effort: expected one of none, {', '.join(budgets)}", param="reasoning_effort")
    return {"type": "enabled", "budget_tokens": budgets[effort]}


def _thinking_blocks(blocks: Any) -> list[dict[str, Any]]:
    """An assistant message's ``thinking_blocks`` (as this gateway and LiteLLM return them) back as Anthropic
    blocks: they must precede its tool_use blocks when thinking is on."""
    if not isinstance(blocks, list):
        raise ApiError(400, "messages: thinking_blocks must be a list", param="messages")
    result = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "thinking" and isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str):
            result.append({"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]})
        elif kind == "redacted_thinking" and isinstance(block.get("data"), str):
            result.append({"type": "redacted_thinking", "data": block["data"]})
        else:
            raise ApiError(400, "messages: each thinking block needs {type: thinking, thinking, signature} or "
                                "{type: redacted_thinking, data}", param="messages")
    return result


def _usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic usage → OpenAI's, as LiteLLM maps it: cache reads and writes count as prompt tokens."""
    fresh = int(usage.get("input_tokens") or 0)
    read = int(usage.get("cache_read_input_tokens") or 0)
    created = int(usage.get("cache_creation_input_tokens") or 0)
    output = int(usage.get("output_tokens") or 0)
    prompt = fresh + read + created
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": created},
            "cache_read_input_tokens": read, "cache_creation_input_tokens": created}


def _text_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            block = {"type": "text", "text": part.get("text", "")}
            if part.get("cache_control"):
                block["cache_control"] = part["cache_control"]
            blocks.append(block)
    return blocks


def _image(part: Mapping[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url", "") if isinstance(image, dict) else str(image or "")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0] or "image/png"
        if ";base64" not in header:
            raise ApiError(400, "image_url: data URLs must be base64-encoded for anthropic", param="messages")
        source: dict[str, Any] = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}
    else:
        raise ApiError(400, "image_url: expected a data: URL or an http(s) URL", param="messages")
    block: dict[str, Any] = {"type": "image", "source": source}
    if part.get("cache_control"):
        block["cache_control"] = part["cache_control"]
    return block


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return _text_blocks(content)
    blocks = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            blocks.extend(_text_blocks([part]))
        elif part.get("type") == "image_url":
            blocks.append(_image(part))
        else:
            raise ApiError(400, f"messages: content part type {part.get('type')!r} is not supported by anthropic",
                           param="messages")
    return blocks


def _messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages → (system blocks, Anthropic messages), consecutive same-role turns merged."""
    system: list[dict[str, Any]] = []
    result: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError(400, "messages: each message must be an object", param="messages")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_text_blocks(content))
            continue
        if role == "user":
            turn, blocks = "user", _user_blocks(content)
        elif role == "assistant":
            turn, blocks = "assistant", _text_blocks(content)
            if message.get("thinking_blocks"):
                blocks = _thinking_blocks(message["thinking_blocks"]) + blocks
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                               "input": tool_call_arguments(function.get("arguments"))})
        elif role in ("tool", "function"):
            result_block: dict[str, Any] = {"type": "tool_result",
                                            "tool_use_id": message.get("tool_call_id") or message.get("name")}
            if isinstance(content, str):
                result_block["content"] = content
            else:
                result_block["content"] = _text_blocks(content)
            turn, blocks = "user", [result_block]
        else:
            raise ApiError(400, f"messages: role {role!r} is not supported by anthropic", param="messages")
        if not blocks:
            continue
        if result and result[-1]["role"] == turn:
            result[-1]["content"].extend(blocks)
        else:
            result.append({"role": turn, "content": blocks})
    return system, result


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = tool.get("function") if tool.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not function.get("name"):
        raise ApiError(400, "tools: each tool must be {type: function, function: {name, parameters}}",
                       param="tools")
    converted: dict[str, Any] = {"name": function["name"],
                                 "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        converted["description"] = function["description"]
    if tool.get("cache_control"):
        converted["cache_control"] = tool["cache_control"]
    return converted


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        return {"type": "tool", "name": choice["function"]["name"]}
    raise ApiError(400, "tool_choice: expected auto, required, none or {type: function, function: {name}}",
                   param="tool_choice")
