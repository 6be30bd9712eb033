"""Amazon Bedrock (``bedrock/<model id>``): OpenAI chat requests through the Converse and ConverseStream APIs.

``POST {endpoint}/model/{modelId}/converse`` (JSON answer) and ``.../converse-stream`` (an
``application/vnd.amazon.eventstream`` answer), signed with SigV4 (:func:`~sluicegate.providers.aws_auth.sign_headers`:
botocore's ``SigV4Auth``) with
credentials held by :class:`~sluicegate.providers.aws_auth.AwsCredentialSource` (resolved and refreshed off the
request path), or
with a Bedrock API key as ``Authorization: Bearer``. Streams are decoded by botocore's ``EventStreamBuffer``
and each event is relayed as an OpenAI chunk as soon as it is complete.

Translation, as LiteLLM's Converse route does it: system messages → ``system``; user images (base64 ``data:``
URLs, or ``s3://`` locations) → ``image`` blocks; tools → ``toolConfig`` (``toolSpec`` / ``toolUse`` /
``toolResult``); ``max_tokens``, ``temperature``, ``top_p`` and ``stop`` → ``inferenceConfig``; ``stopReason``
and ``usage`` (cache read and write tokens counted as prompt tokens) mapped back. On Claude models ``thinking``
passes through and ``reasoning_effort`` becomes a thinking budget (the ``anthropic`` provider's budgets), both as
``additionalModelRequestFields.thinking``, with ``maxTokens`` defaulted to 4096 plus the budget; thinking comes back
as ``reasoning_content``. ``response_format`` (``json_schema`` or ``json_object``) becomes a forced tool named
``json_tool_call`` whose input schema is the requested one (forced only without thinking, which Claude cannot
combine with a forced tool); its input comes back as the message's content, streamed as content deltas. A root
``$ref`` is resolved to the definition it names (a tool's input is an object); ``$defs`` go as they are.

``/v1/messages`` on a Claude model goes through ``InvokeModel`` / ``InvokeModelWithResponseStream`` instead: the
client's Messages body with ``anthropic_version: bedrock-2023-05-31`` (``anthropic-beta`` as ``anthropic_beta``),
its ``chunk`` events relayed as Anthropic's server-sent events.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import msgspec

from sluicegate.errors import ApiError
from sluicegate.net.http import HttpClientError, HttpTimeoutError, encode_headers
from sluicegate.providers.anthropic import (DEFAULT_MAX_TOKENS, RESPONSE_FORMAT_TOOL_NAME, effort_thinking,
                                           thinking_budgets)
from sluicegate.providers.anthropic_schema import tool_input_schema
from sluicegate.providers.aws_auth import AwsCredentialSource, sign_headers
from sluicegate.providers.base import Provider, ProviderClients, ProviderParams, UpstreamError, tool_call_arguments

__all__ = ("BedrockParams", "BedrockProvider")

_json = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
"""The ``anthropic_version`` InvokeModel takes for Claude's Messages body."""
SIGNING_NAME = "bedrock"  # the service model's signingName (its endpoint prefix is bedrock-runtime)
REGION_ENV = ("AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION")

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "model_context_window_exceeded": "length", "tool_use": "tool_calls",
                  "guardrail_intervened": "content_filter", "content_filtered": "content_filter",
                  "malformed_model_output": "stop", "malformed_tool_use": "tool_calls"}

# Bedrock's error shapes (bedrock-runtime's service model) and the errors AWS's front door adds before a request
# reaches Bedrock (signature, token) → (HTTP status for the client, OpenAI error type).
ERRORS: dict[str, tuple[int, str]] = {
    "ValidationException": (400, "invalid_request_error"),
    "UnrecognizedClientException": (401, "authentication_error"),
    "InvalidSignatureException": (401, "authentication_error"),
    "IncompleteSignatureException": (401, "authentication_error"),
    "MissingAuthenticationTokenException": (401, "authentication_error"),
    "ExpiredTokenException": (401, "authentication_error"),
    "AccessDeniedException": (403, "permission_error"),
    "ResourceNotFoundException": (404, "not_found_error"),
    "ModelTimeoutException": (408, "timeout"),
    "ModelErrorException": (424, "upstream_error"),
    "ModelStreamErrorException": (424, "upstream_error"),
    "ThrottlingException": (429, "rate_limit_error"),
    "ModelNotReadyException": (429, "rate_limit_error"),
    "ServiceQuotaExceededException": (429, "rate_limit_error"),
    "InternalServerException": (500, "api_error"),
    "ServiceUnavailableException": (503, "service_unavailable"),
}
STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 429: "rate_limit_error"}
DUMMY_TOOL = {"toolSpec": {"name": "dummy_tool", "description": "This is a dummy tool call",
                           "inputSchema": {"json": {"type": "object", "properties": {}}}}}
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}


class BedrockParams(ProviderParams, frozen=True, kw_only=True, forbid_unknown_fields=True):
    aws_region_name: str | None = None
    """The AWS region. Default: ``AWS_REGION_NAME``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``. Required."""
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    """Static credentials; without them, botocore's standard chain (environment, shared files, roles)."""
    aws_profile_name: str | None = None
    """A profile of the shared AWS files for the standard chain."""
    aws_role_name: str | None = None
    """A role ARN to assume through STS with the credentials above; its credentials are refreshed before expiry."""
    aws_session_name: str | None = None
    """The role session name (default ``sluicegate-bedrock-session``)."""
    aws_external_id: str | None = None
    aws_sts_endpoint: str | None = None
    """STS endpoint URL for the role (default: the region's)."""
    aws_bedrock_runtime_endpoint: str | None = None
    """The runtime endpoint (default ``https://bedrock-runtime.{region}.amazonaws.com``; ``api_base`` wins)."""
    extra_headers: dict[str, str] | None = None
    """Headers added to (and signed with) every upstream request."""


class BedrockProvider(Provider):
    custom_llm_provider: ClassVar[str] = "bedrock"
    price_provider: ClassVar[str | None] = "aws"  # genai-prices' id for models served by Bedrock
    Params = BedrockParams
    api_key_env: ClassVar[tuple[str, ...]] = ("AWS_BEARER_TOKEN_BEDROCK",)
    params_env: ClassVar[dict[str, tuple[str, ...]]] = {"aws_region_name": REGION_ENV,
                                                        "aws_bedrock_runtime_endpoint": ("AWS_BEDROCK_RUNTIME_ENDPOINT",)}
    supported_params: ClassVar[frozenset[str] | None] = frozenset({
        "max_tokens", "max_completion_tokens", "stop", "temperature", "top_p", "tools", "tool_choice", "n",
        "response_format", "thinking", "reasoning_effort"})
    params: BedrockParams

    def __init__(self, deployment: Any, params: ProviderParams) -> None:
        super().__init__(deployment, params)
        region = self.params.aws_region_name or ""
        self.region = region
        model = deployment.upstream_model
        if model.startswith("converse/"):  # LiteLLM's explicit route name: the same model id
            model = model[len("converse/"):]
            deployment.upstream_model = model  # what log events and costs name
        self.model_id = model
        self.claude = "anthropic." in model.lower() or "claude" in model.lower()
        self.thinking_budgets = thinking_budgets()
        base = (deployment.api_base or self.params.aws_bedrock_runtime_endpoint
                or f"https://bedrock-runtime.{region}.amazonaws.com").rstrip("/")
        path = f"{base}/model/{quote(model, safe='')}"
        self.url, self.stream_url = f"{path}/converse", f"{path}/converse-stream"
        self.invoke_url, self.invoke_stream_url = f"{path}/invoke", f"{path}/invoke-with-response-stream"
        self._extra = dict(self.params.extra_headers or {})
        self.credentials: AwsCredentialSource | None = None
        self._bearer: bytes | None = None
        if deployment.api_key:  # a Bedrock API key: no SigV4
            self._bearer = encode_headers({"content-type": "application/json",
                                           "authorization": f"Bearer {deployment.api_key}", **self._extra})
        else:
            p = self.params
            self.credentials = AwsCredentialSource(
                what=f"model {deployment.model_name!r}", region=region, access_key_id=p.aws_access_key_id,
                secret_access_key=p.aws_secret_access_key, session_token=p.aws_session_token,
                profile_name=p.aws_profile_name, role_arn=p.aws_role_name, session_name=p.aws_session_name,
                external_id=p.aws_external_id, sts_endpoint=p.aws_sts_endpoint)

    @classmethod
    def check(cls, deployment: Any, params: ProviderParams, environ: Mapping[str, str]) -> list[str]:
        problems = super().check(deployment, params, environ)
        assert isinstance(params, BedrockParams)
        if deployment.upstream_model.startswith("invoke/"):
            problems.append("model: bedrock/invoke/... is not supported; use bedrock/<model id> (the Converse API, "
                            "which serves every chat model on Bedrock)")
        if not params.aws_region_name:
            problems.append(f"aws_region_name: required for bedrock (or set {', '.join(REGION_ENV)})")
        if bool(params.aws_access_key_id) != bool(params.aws_secret_access_key):
            problems.append("aws_secret_access_key: aws_access_key_id and aws_secret_access_key go together")
        for field in ("aws_sts_endpoint", "aws_bedrock_runtime_endpoint"):
            value = getattr(params, field)
            if value and not value.startswith(("http://", "https://")):
                problems.append(f"{field}: not an http(s) URL: {value!r}")
        return problems

    # lifecycle ----------------------------------------------------------------------------------------
    async def start(self, clients: ProviderClients) -> None:
        await super().start(clients)
        if self.credentials is not None:
            await self.credentials.start(timeout=min(self.deployment.timeout, 30.0))

    async def aclose(self) -> None:
        if self.credentials is not None:
            await self.credentials.aclose()

    def accepted(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("n") not in (None, 1):
            if not self.deployment.drop_params:
                raise ApiError(400, "bedrock does not support n > 1; remove it, or set drop_params: true",
                               param="n", code="unsupported_params")
            body = {k: v for k, v in body.items() if k != "n"}
        if not self.claude:  # extended thinking is Claude's on the Converse API
            given = [k for k in ("thinking", "reasoning_effort")
                     if body.get(k) is not None and body.get(k) != "none"]
            if given and not self.deployment.drop_params:
                raise ApiError(400, f"{given[0]}: bedrock takes extended thinking only on Claude models, not "
                                    f"{self.model_id!r}; remove it, or set drop_params: true",
                               param=given[0], code="unsupported_params")
            body = {k: v for k, v in body.items() if k not in given}
        return super().accepted(body)

    # transport ----------------------------------------------------------------------------------------
    def _headers(self, url: str, payload: bytes, stream: bool) -> bytes:
        if self._bearer is not None:
            return self._bearer + (b"accept: application/vnd.amazon.eventstream\r\n" if stream else b"")
        assert self.credentials is not None
        credentials = self.credentials.current()
        if credentials is None:
            reason = self.credentials.last_error or "still being resolved"
            raise UpstreamError(503, f"bedrock: AWS credentials are not available: {reason}",
                                type="service_unavailable", code="credentials_unavailable")
        headers = {"Content-Type": "application/json", **self._extra}
        if stream:
            headers["Accept"] = "application/vnd.amazon.eventstream"
        return sign_headers(credentials, SIGNING_NAME, self.region, url, payload, headers)

    def upstream_error(self, status: int, headers: Mapping[str, str], content: bytes) -> UpstreamError:
        kind = (headers.get("x-amzn-errortype") or "").split(":", 1)[0]
        message = ""
        try:
            data = _decoder.decode(content)
        except (msgspec.DecodeError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict):
            message = str(data.get("message") or data.get("Message") or "")
            kind = kind or str(data.get("__type") or "").rsplit("#", 1)[-1]
        return _aws_error(kind, message, status)

    async def _post(self, url: str, payload: bytes) -> bytes:
        return await self.post(url, payload, self._headers(url, payload, stream=False))

    # Anthropic's Messages API on Claude models: InvokeModel (/v1/messages) ----------------------------------
    def speaks_messages(self) -> bool:
        """Claude models take the Messages body through InvokeModel, as Claude Code on Bedrock sends it: prompt
        caching, thinking signatures and beta features survive, which a Converse round trip would lose."""
        model = self.model_id.lower()
        return "anthropic." in model or "claude" in model

    def messages_payload(self, body: dict[str, Any], beta: str | None) -> bytes:
        payload = {k: v for k, v in body.items() if k not in ("model", "stream")}
        payload["anthropic_version"] = BEDROCK_ANTHROPIC_VERSION
        features = [f.strip() for f in (beta or "").split(",") if f.strip()]
        if features:
            payload["anthropic_beta"] = features
        return _json.encode(payload)

    async def messages_bytes(self, body: dict[str, Any], request_id: str, beta: str | None) -> bytes:
        return await self._post(self.invoke_url, self.messages_payload(body, beta))

    async def open_messages_stream(self, body: dict[str, Any], request_id: str, beta: str | None) -> Any:
        payload = self.messages_payload(body, beta)
        headers = self._headers(self.invoke_stream_url, payload, stream=True)
        response = await self.post_stream(self.invoke_stream_url, payload, headers)
        return _InvokeStream(self, response)

    # request ------------------------------------------------------------------------------------------
    def translate_request(self, body: Mapping[str, Any]) -> dict[str, Any]:
        system, messages = _messages(body.get("messages") or [])
        request: dict[str, Any] = {"messages": messages}
        if system:
            request["system"] = system
        inference: dict[str, Any] = {}
        thinking = self._thinking(body)
        field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        if body.get(field) is not None:
            inference["maxTokens"] = _number(body[field], field, int)
        elif thinking is not None and thinking.get("type") == "enabled":
            # as LiteLLM: room for the thinking budget on top of the default answer length
            inference["maxTokens"] = DEFAULT_MAX_TOKENS + thinking["budget_tokens"]
        if thinking is not None:
            request["additionalModelRequestFields"] = {"thinking": thinking}
        if body.get("temperature") is not None:
            inference["temperature"] = _number(body["temperature"], "temperature", float)
        if body.get("top_p") is not None:
            inference["topP"] = _number(body["top_p"], "top_p", float)
        stop = body.get("stop")
        if stop:
            if not (isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
                raise ApiError(400, "stop: expected a string or a list of strings", param="stop")
            inference["stopSequences"] = [stop] if isinstance(stop, str) else stop
        if inference:
            request["inferenceConfig"] = inference
        tools = body.get("tools")
        choice = body.get("tool_choice")
        if tools is not None and not isinstance(tools, list):
            raise ApiError(400, "tools: expected a list", param="tools")
        json_tool = _response_format(body.get("response_format"))
        if (tools and choice != "none") or json_tool is not None:
            config: dict[str, Any] = {"tools": [_tool(t) for t in tools] if tools and choice != "none" else []}
            mapped = _tool_choice(choice) if config["tools"] else None
            if json_tool is not None:
                config["tools"].append(json_tool)
                if thinking is None or thinking.get("type") != "enabled":
                    mapped = {"tool": {"name": RESPONSE_FORMAT_TOOL_NAME}}
            if mapped is not None:
                config["toolChoice"] = mapped
            request["toolConfig"] = config
        elif choice is not None and choice != "none":
            raise ApiError(400, "tool_choice: given without tools", param="tool_choice")
        if "toolConfig" not in request and _has_tool_blocks(messages):
            # Converse refuses toolUse / toolResult blocks without a toolConfig; LiteLLM adds a dummy tool too.
            request["toolConfig"] = {"tools": [DUMMY_TOOL]}
        return request

    def _thinking(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Claude's ``thinking`` for ``additionalModelRequestFields``, from ``thinking`` or ``reasoning_effort``."""
        thinking = body.get("thinking")
        if thinking is not None:
            if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
                raise ApiError(400, "thinking: expected {type: enabled, budget_tokens: N} or {type: disabled}",
                               param="thinking")
            if thinking["type"] == "enabled":
                budget = thinking.get("budget_tokens")
                if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1024:
                    raise ApiError(400, "thinking: budget_tokens must be an integer of at least 1024",
                                   param="thinking")
                return {"type": "enabled", "budget_tokens": budget}
            return {"type": "disabled"}
        return effort_thinking(body, self.thinking_budgets)

    @staticmethod
    def json_mode(body: Mapping[str, Any]) -> bool:
        """Whether ``body``'s response_format goes as the forced tool (whose input is then the answer's content)."""
        value = body.get("response_format")
        return isinstance(value, dict) and value.get("type") in ("json_schema", "json_object")

    # answers ------------------------------------------------------------------------------------------
    async def complete(self, body: Mapping[str, Any], *, request_id: str) -> dict[str, Any]:
        payload = _json.encode(self.translate_request(body))
        content = await self._post(self.url, payload)
        try:
            answer = _decoder.decode(content)
        except msgspec.DecodeError:
            raise UpstreamError(502, "upstream bedrock returned a body that is not JSON", type="upstream_error",
                                code="502") from None
        return self.translate_response(answer, json_mode=self.json_mode(body))

    def translate_response(self, answer: Mapping[str, Any], *, json_mode: bool = False) -> dict[str, Any]:
        message = (answer.get("output") or {}).get("message") or {}
        texts: list[str] = []
        reasoning: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        for block in message.get("content") or ():
            if "text" in block:
                texts.append(block["text"] or "")
            elif "toolUse" in block and json_mode and block["toolUse"].get("name") == RESPONSE_FORMAT_TOOL_NAME:
                texts.append(_json.encode(block["toolUse"].get("input") or {}).decode())  # the answer itself
            elif "toolUse" in block:
                use = block["toolUse"]
                tool_calls.append({"id": use.get("toolUseId"), "type": "function",
                                   "function": {"name": use.get("name"),
                                                "arguments": _json.encode(use.get("input") or {}).decode()}})
            elif "reasoningContent" in block:
                text = (block["reasoningContent"].get("reasoningText") or {}).get("text")
                if text:
                    reasoning.append(text)
        reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
        if reasoning:
            reply["reasoning_content"] = "".join(reasoning)
        if tool_calls:
            reply["tool_calls"] = tool_calls
        finish = FINISH_REASONS.get(answer.get("stopReason") or "", "stop")
        if finish == "tool_calls" and not tool_calls:  # only the response_format tool was called
            finish = "stop"
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_id,
                "choices": [{"index": 0, "message": reply, "finish_reason": finish}],
                "usage": _usage(answer.get("usage") or {})}

    async def stream(self, body: Mapping[str, Any], *, request_id: str) -> AsyncIterator[dict[str, Any]]:
        payload = _json.encode(self.translate_request(body))
        headers = self._headers(self.stream_url, payload, stream=True)
        response = await self.post_stream(self.stream_url, payload, headers)
        try:
            from botocore.eventstream import EventStreamBuffer, EventStreamError  # ~0.3 s, only where Bedrock is used

            translator = _StreamTranslator(self.model_id, json_mode=self.json_mode(body))
            buffer = EventStreamBuffer()
            try:
                async for data in response.aiter_raw():
                    buffer.add_data(data)
                    for message in buffer:
                        for chunk in translator.feed(message.headers, message.payload):
                            yield chunk
                    if translator.finished:
                        return
            except HttpTimeoutError:
                raise self._timed_out() from None
            except HttpClientError as exc:
                raise self._unreachable(exc) from None
            except EventStreamError as exc:
                raise UpstreamError(502, f"upstream bedrock sent a broken event stream: {type(exc).__name__}",
                                    type="upstream_error", code="502") from None
            if not translator.finished:
                raise UpstreamError(502, "upstream bedrock ended the stream before its metadata event",
                                    type="upstream_error", code="502")
        finally:
            await response.aclose()


class _InvokeStream:
    """InvokeModelWithResponseStream's event-stream ``chunk`` messages (each an Anthropic stream event, base64 in
    JSON) as Anthropic server-sent events, each relayed as soon as its message is complete."""

    __slots__ = ("_provider", "_response")

    def __init__(self, provider: BedrockProvider, response: Any) -> None:
        self._provider = provider
        self._response = response

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        from botocore.eventstream import EventStreamBuffer, EventStreamError  # imported where Bedrock is first used

        buffer = EventStreamBuffer()
        try:
            async for data in self._response.aiter_raw():
                buffer.add_data(data)
                frames = []
                for message in buffer:
                    headers = message.headers
                    if headers.get(":message-type") == "exception":
                        kind = str(headers.get(":exception-type") or "")
                        raise _aws_error(kind[:1].upper() + kind[1:], _message_of(message.payload), 500)
                    if headers.get(":message-type") == "error":
                        raise _aws_error(str(headers.get(":error-code") or ""),
                                         str(headers.get(":error-message") or ""), 500)
                    if headers.get(":event-type") != "chunk":
                        continue
                    try:
                        event = base64.b64decode(_decoder.decode(message.payload)["bytes"])
                        kind = _decoder.decode(event)["type"]
                    except (msgspec.DecodeError, KeyError, TypeError, binascii.Error):
                        raise UpstreamError(502, "upstream bedrock sent a chunk that is not an Anthropic event",
                                            type="upstream_error", code="502") from None
                    frames.append(b"event: " + str(kind).encode() + b"\ndata: " + event + b"\n\n")
                if frames:
                    yield b"".join(frames)
        except HttpTimeoutError:
            raise self._provider._timed_out() from None
        except HttpClientError as exc:
            raise self._provider._unreachable(exc) from None
        except EventStreamError as exc:
            raise UpstreamError(502, f"upstream bedrock sent a broken event stream: {type(exc).__name__}",
                                type="upstream_error", code="502") from None

    async def aclose(self) -> None:
        await self._response.aclose()


class _StreamTranslator:
    """ConverseStream events (event-stream messages) → OpenAI chunks, one event at a time."""

    __slots__ = ("base", "tool_index", "block_tools", "finished", "finish_reason", "json_mode", "json_blocks")

    def __init__(self, model: str, *, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self.json_blocks: set[int] = set()  # content blocks of the forced response_format tool
        self.base: dict[str, Any] = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                                     "created": int(time.time()), "model": model}
        self.tool_index = -1
        self.block_tools: dict[int, int] = {}  # contentBlockIndex -> OpenAI tool_calls index
        self.finished = False
        self.finish_reason: str | None = None

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    def feed(self, headers: Mapping[str, Any], payload: bytes) -> list[dict[str, Any]]:
        message_type = headers.get(":message-type")
        if message_type == "exception":
            kind = str(headers.get(":exception-type") or "")
            raise _aws_error(kind[:1].upper() + kind[1:], _message_of(payload), 500)
        if message_type == "error":
            raise _aws_error(str(headers.get(":error-code") or ""), str(headers.get(":error-message") or ""), 500)
        kind = headers.get(":event-type")
        try:
            event = _decoder.decode(payload) if payload else {}
        except msgspec.DecodeError:
            raise UpstreamError(502, f"upstream bedrock sent a {kind} event that is not JSON",
                                type="upstream_error", code="502") from None
        if kind == "contentBlockDelta":
            delta = event.get("delta") or {}
            if "text" in delta:
                return [self._chunk({"content": delta["text"]})]
            if "toolUse" in delta and int(event.get("contentBlockIndex", 0)) in self.json_blocks:
                return [self._chunk({"content": (delta["toolUse"] or {}).get("input", "")})]
            if "toolUse" in delta:
                index = self.block_tools.get(int(event.get("contentBlockIndex", 0)), max(self.tool_index, 0))
                return [self._chunk({"tool_calls": [{"index": index, "function": {
                    "arguments": (delta["toolUse"] or {}).get("input", "")}}]})]
            if "reasoningContent" in delta and delta["reasoningContent"].get("text"):
                return [self._chunk({"reasoning_content": delta["reasoningContent"]["text"]})]
            return []
        if kind == "contentBlockStart":
            use = (event.get("start") or {}).get("toolUse")
            if use and self.json_mode and use.get("name") == RESPONSE_FORMAT_TOOL_NAME:
                self.json_blocks.add(int(event.get("contentBlockIndex", 0)))
                return []
            if use:
                self.tool_index += 1
                self.block_tools[int(event.get("contentBlockIndex", 0))] = self.tool_index
                return [self._chunk({"tool_calls": [{"index": self.tool_index, "id": use.get("toolUseId"),
                                                     "type": "function",
                                                     "function": {"name": use.get("name"), "arguments": ""}}]})]
            return []
        if kind == "messageStart":
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "messageStop":
            self.finish_reason = FINISH_REASONS.get(event.get("stopReason") or "", "stop")
            if self.finish_reason == "tool_calls" and self.tool_index < 0:  # only the response_format tool
                self.finish_reason = "stop"
            return [self._chunk({}, self.finish_reason)]
        if kind == "metadata":
            self.finished = True
            return [{**self.base, "choices": [], "usage": _usage(event.get("usage") or {})}]
        return []  # contentBlockStop, and event types added later


# translation helpers ----------------------------------------------------------------------------------
def _message_of(payload: bytes) -> str:
    try:
        data = _decoder.decode(payload)
    except msgspec.DecodeError:
        return payload[:300].decode("utf-8", "replace")
    return str(data.get("message") or data.get("Message") or "") if isinstance(data, dict) else ""


def _aws_error(kind: str, message: str, status: int) -> UpstreamError:
    mapped_status, etype = ERRORS.get(kind, (status, STATUS_TYPES.get(status, "upstream_error")))
    return UpstreamError(mapped_status, message or f"upstream bedrock returned {kind or f'HTTP {status}'}",
                         type=etype, code=kind or str(status))


def _usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Converse usage → OpenAI's, as LiteLLM maps it: cache reads and writes count as prompt tokens."""
    fresh = int(usage.get("inputTokens") or 0)
    read = int(usage.get("cacheReadInputTokens") or 0)
    written = int(usage.get("cacheWriteInputTokens") or 0)
    output = int(usage.get("outputTokens") or 0)
    prompt = fresh + read + written
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": written},
            "cache_read_input_tokens": read, "cache_creation_input_tokens": written}


def _number(value: Any, field: str, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{field}: expected a number", param=field)
    return kind(value)


def _text_blocks(content: Any, field: str = "messages") -> list[dict[str, Any]]:
    """Text content as Converse blocks; ``cache_control`` on a part becomes a ``cachePoint`` after it."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise ApiError(400, f"{field}: content must be a string or a list of parts", param=field)
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text" and part.get("text"):
            blocks.append({"text": str(part["text"])})
            if part.get("cache_control"):
                blocks.append({"cachePoint": {"type": "default"}})
    return blocks


def _image(part: Mapping[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url", "") if isinstance(image, dict) else str(image or "")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0].lower()
        if ";base64" not in header:
            raise ApiError(400, "image_url: data URLs must be base64-encoded for bedrock", param="messages")
        image_format = IMAGE_FORMATS.get(media_type)
        if image_format is None:
            raise ApiError(400, f"image_url: bedrock takes png, jpeg, gif or webp images, not {media_type!r}",
                           param="messages")
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "image_url: the data URL is not valid base64", param="messages") from None
        return {"image": {"format": image_format, "source": {"bytes": data}}}  # a blob travels as base64 in JSON
    if url.startswith("s3://"):
        suffix = url.rsplit(".", 1)[-1].lower()
        image_format = {"jpg": "jpeg"}.get(suffix, suffix)
        if image_format not in IMAGE_FORMATS.values():
            raise ApiError(400, "image_url: an s3:// image needs a .png, .jpeg, .jpg, .gif or .webp name",
                           param="messages")
        return {"image": {"format": image_format, "source": {"s3Location": {"uri": url}}}}
    raise ApiError(400, "image_url: bedrock takes images as base64 data: URLs or s3:// locations (it does not "
                        "fetch http(s) URLs)", param="messages")


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return _text_blocks(content)
    if not isinstance(content, list):
        raise ApiError(400, "messages: content must be a string or a list of parts", param="messages")
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            blocks.extend(_text_blocks([part]))
        elif part.get("type") == "image_url":
            blocks.append(_image(part))
        else:
            raise ApiError(400, f"messages: content part type {part.get('type')!r} is not supported by bedrock",
                           param="messages")
    return blocks


def _messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages → (system blocks, Converse messages), consecutive same-role turns merged."""
    if not isinstance(messages, list):
        raise ApiError(400, "messages: expected a list", param="messages")
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
            for call in message.get("tool_calls") or ():
                function = (call.get("function") or {}) if isinstance(call, dict) else {}
                if not isinstance(function, dict) or not function.get("name") or not call.get("id"):
                    raise ApiError(400, "messages: each tool call needs an id and function.name", param="messages")
                blocks.append({"toolUse": {"toolUseId": str(call["id"]), "name": str(function["name"]),
                                           "input": tool_call_arguments(function.get("arguments"))}})
        elif role in ("tool", "function"):
            tool_use_id = message.get("tool_call_id") or message.get("name")
            if not tool_use_id:
                raise ApiError(400, "messages: a tool message needs tool_call_id", param="messages")
            parts = _text_blocks(content) if not isinstance(content, str) else [{"text": content or " "}]
            parts = [p for p in parts if "text" in p] or [{"text": " "}]
            turn, blocks = "user", [{"toolResult": {"toolUseId": str(tool_use_id), "content": parts}}]
        else:
            raise ApiError(400, f"messages: role {role!r} is not supported by bedrock", param="messages")
        if not blocks:
            continue
        if result and result[-1]["role"] == turn:
            result[-1]["content"].extend(blocks)
        else:
            result.append({"role": turn, "content": blocks})
    if not result:
        raise ApiError(400, "messages: bedrock needs at least one user or assistant message with content",
                       param="messages")
    return system, result


def _has_tool_blocks(messages: list[dict[str, Any]]) -> bool:
    return any("toolUse" in block or "toolResult" in block for m in messages for block in m["content"])


def _tool(tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not function.get("name"):
        raise ApiError(400, "tools: each tool must be {type: function, function: {name, parameters}}",
                       param="tools")
    spec: dict[str, Any] = {"name": str(function["name"]),
                            "inputSchema": {"json": function.get("parameters") or {"type": "object",
                                                                                  "properties": {}}}}
    if function.get("description"):
        spec["description"] = str(function["description"])
    return {"toolSpec": spec}


def _response_format(value: Any) -> dict[str, Any] | None:
    """``response_format`` as the forced tool that stands for it on the Converse API (as LiteLLM maps it)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"toolSpec": {"name": RESPONSE_FORMAT_TOOL_NAME, "inputSchema": {"json": {
            "type": "object", "properties": {}, "additionalProperties": True}}}}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format: json_schema needs {json_schema: {name, schema}}",
                           param="response_format")
        tool: dict[str, Any] = {"name": RESPONSE_FORMAT_TOOL_NAME, "inputSchema": {"json": tool_input_schema(schema)}}
        if isinstance(spec.get("description"), str) and spec["description"]:
            tool["description"] = spec["description"]
        return {"toolSpec": tool}
    raise ApiError(400, "response_format: expected type text, json_object or json_schema", param="response_format")


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"auto": {}}
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        return {"tool": {"name": str(choice["function"]["name"])}}
    raise ApiError(400, "tool_choice: expected auto, required, none or {type: function, function: {name}}",
                   param="tool_choice")
