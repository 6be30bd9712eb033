"""Gemini (``gemini/<model>``): OpenAI chat requests translated to Google's ``generateContent`` and back.

``POST {api_base}/v1beta/models/{model}:generateContent`` (``:streamGenerateContent?alt=sse`` for streams) with the
``x-goog-api-key`` header. The translation is shared with Vertex AI's Gemini models (``vertex_ai.py``):

- messages → ``contents`` (roles ``user`` / ``model``, consecutive turns of one role merged) and ``parts``; system
  and developer messages → ``systemInstruction``; images → ``inlineData`` (base64 ``data:`` URLs) or ``fileData``
  (http(s) and ``gs://`` URLs); ``input_audio`` parts → ``inlineData`` with ``audio/<format>``; ``file`` parts →
  ``inlineData`` (``file_data``) or ``fileData`` (``file_id`` as a Files API or ``gs://`` URI);
- tools → ``functionDeclarations`` (``parametersJsonSchema``: the JSON Schema as the client wrote it), tool_choice
  → ``toolConfig.functionCallingConfig``, assistant tool calls → ``functionCall`` parts and tool results →
  ``functionResponse`` parts. A call's ``thoughtSignature`` travels inside its OpenAI tool-call id (as LiteLLM does)
  so the round trip gives it back, as thinking models require;
- sampling parameters → ``generationConfig``; ``response_format`` → ``responseMimeType`` / ``responseJsonSchema``;
  ``reasoning_effort`` → ``thinkingConfig``; ``logprobs`` / ``top_logprobs`` → ``responseLogprobs`` / ``logprobs``;
- answers: ``finishReason`` mapped (safety reasons → ``content_filter``), thought parts → ``reasoning_content``,
  ``usageMetadata`` → usage as LiteLLM reports it (thoughts count as completion and reasoning tokens, cached content
  as cached prompt tokens), ``logprobsResult`` → ``choices[].logprobs.content``. A prompt blocked by safety
  filters is a 400 ``content_filter`` error.

A stream's events are translated one by one as they arrive.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import msgspec

from sluicegate.errors import ApiError
from sluicegate.net.http import encode_headers
from sluicegate.providers.base import (Provider, ProviderParams, UpstreamError, request_id_header,
                                      tool_call_arguments)

__all__ = ("GeminiParams", "GeminiProvider", "GeminiTranslation")

_json = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_rng = random.Random()

FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", "FINISH_REASON_UNSPECIFIED": "stop",
                  "MALFORMED_FUNCTION_CALL": "stop", "UNEXPECTED_TOOL_CALL": "stop", "TOO_MANY_TOOL_CALLS": "stop"}
SAFETY_FINISH_REASONS = frozenset({"SAFETY", "RECITATION", "LANGUAGE", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT",
                                   "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION",
                                   "IMAGE_OTHER", "NO_IMAGE"})
ERROR_TYPES = {"INVALID_ARGUMENT": "invalid_request_error", "FAILED_PRECONDITION": "invalid_request_error",
               "OUT_OF_RANGE": "invalid_request_error", "UNAUTHENTICATED": "authentication_error",
               "PERMISSION_DENIED": "permission_error", "NOT_FOUND": "not_found_error",
               "RESOURCE_EXHAUSTED": "rate_limit_error", "DEADLINE_EXCEEDED": "timeout",
               "UNAVAILABLE": "api_error", "INTERNAL": "api_error"}
STATUS_CODES = {v: k for k, v in {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                                  404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                                  503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.items()}
# LiteLLM's budgets for reasoning_effort (DEFAULT_REASONING_EFFORT_*_THINKING_BUDGET); Gemini 3 takes a level.
THINKING_BUDGETS = {"none": 0, "disable": 0, "minimal": 128, "low": 1024, "medium": 2048, "high": 4096}
THINKING_LEVELS = {"none": "minimal", "disable": "minimal", "minimal": "minimal", "low": "low", "medium": "medium",
                   "high": "high"}
THOUGHT_SEPARATOR = "__thought__"

GEMINI_PARAMS = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "n",
                           "presence_penalty", "frequency_penalty", "seed", "response_format", "tools", "tool_choice",
                           "parallel_tool_calls", "user", "reasoning_effort", "logprobs", "top_logprobs"})
MAX_TOP_LOGPROBS = 20  # OpenAI's and Gemini's upper bound
# input_audio formats → the audio MIME types Gemini takes (its documented list: WAV, MP3, AIFF, AAC, OGG, FLAC)
AUDIO_MIME_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3", "mpeg": "audio/mp3", "aiff": "audio/aiff",
                    "aac": "audio/aac", "ogg": "audio/ogg", "flac": "audio/flac"}


class GeminiParams(ProviderParams, frozen=True, kw_only=True, forbid_unknown_fields=True):
    safety_settings: list[dict[str, Any]] | None = None
    """Sent as ``safetySettings`` (``[{category: HARM_CATEGORY_..., threshold: BLOCK_...}]``), LiteLLM's name."""
    extra_headers: dict[str, str] | None = None
    """Headers added to every upstream request."""


def _new_call_id() -> str:
    return f"call_{_rng.getrandbits(96):024x}"


class GeminiTranslation:
    """OpenAI chat ⇄ Gemini ``GenerateContent``: the part Gemini and Vertex AI share."""

    __slots__ = ("model", "provider_name", "safety_settings", "thinking_levels")

    def __init__(self, model: str, provider_name: str, safety_settings: list[dict[str, Any]] | None) -> None:
        self.model = model
        self.provider_name = provider_name
        self.safety_settings = safety_settings
        self.thinking_levels = model.startswith("gemini-3")

    # request --------------------------------------------------------------------------------------
    def request(self, body: Mapping[str, Any]) -> dict[str, Any]:
        system, contents = _contents(body.get("messages") or [], self.provider_name)
        if not contents:
            raise ApiError(400, "messages: at least one user, assistant or tool message is required",
                           param="messages")
        request: dict[str, Any] = {"contents": contents}
        if system:
            request["systemInstruction"] = {"parts": system}
        config = self._generation_config(body)
        if config:
            request["generationConfig"] = config
        tools = body.get("tools")
        if tools:
            request["tools"] = [{"functionDeclarations": [_declaration(t) for t in tools]}]
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            request["toolConfig"] = {"functionCallingConfig": choice}
        if self.safety_settings:
            request["safetySettings"] = self.safety_settings
        return request

    def _generation_config(self, body: Mapping[str, Any]) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for openai_name, gemini_name in (("temperature", "temperature"), ("top_p", "topP"),
                                         ("presence_penalty", "presencePenalty"),
                                         ("frequency_penalty", "frequencyPenalty")):
            value = body.get(openai_name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ApiError(400, f"{openai_name}: expected a number", param=openai_name)
                config[gemini_name] = value
        for openai_name, gemini_name in (("seed", "seed"), ("n", "candidateCount")):
            value = body.get(openai_name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ApiError(400, f"{openai_name}: expected an integer", param=openai_name)
                config[gemini_name] = value
        max_tokens = body.get("max_completion_tokens")
        name = "max_completion_tokens"
        if max_tokens is None:
            max_tokens, name = body.get("max_tokens"), "max_tokens"
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise ApiError(400, f"{name}: expected a positive integer", param=name)
            config["maxOutputTokens"] = max_tokens
        stop = body.get("stop")
        if stop:
            stops = [stop] if isinstance(stop, str) else stop
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise ApiError(400, "stop: expected a string or a list of strings", param="stop")
            config["stopSequences"] = stops
        response_format = body.get("response_format")
        if response_format is not None:
            config.update(_response_format(response_format))
        logprobs, top = body.get("logprobs"), body.get("top_logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise ApiError(400, "logprobs: expected true or false", param="logprobs")
        if top is not None:
            if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
                raise ApiError(400, f"top_logprobs: expected an integer from 0 to {MAX_TOP_LOGPROBS}",
                               param="top_logprobs")
            if not logprobs:
                raise ApiError(400, "top_logprobs: needs logprobs: true", param="top_logprobs")
        if logprobs:
            config["responseLogprobs"] = True
            if top is not None:
                config["logprobs"] = top
        effort = body.get("reasoning_effort")
        if effort is not None:
            if effort not in THINKING_BUDGETS:
                raise ApiError(400, "reasoning_effort: expected one of none, minimal, low, medium, high",
                               param="reasoning_effort")
            if self.thinking_levels:
                config["thinkingConfig"] = {"thinkingLevel": THINKING_LEVELS[effort], "includeThoughts": True}
            else:
                budget = THINKING_BUDGETS[effort]
                config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}
        return config

    # answers --------------------------------------------------------------------------------------
    def response(self, data: Mapping[str, Any]) -> dict[str, Any]:
        candidates = data.get("candidates") or []
        if not candidates:
            raise _no_candidates(data, self.provider_name)
        choices = []
        for position, candidate in enumerate(candidates):
            texts: list[str] = []
            reasoning: list[str] = []
            calls: list[dict[str, Any]] = []
            for part in (candidate.get("content") or {}).get("parts") or ():
                if "functionCall" in part:
                    calls.append(_tool_call(part))
                elif "text" in part:
                    (reasoning if part.get("thought") else texts).append(part.get("text") or "")
            message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
            if reasoning:
                message["reasoning_content"] = "".join(reasoning)
            if calls:
                message["tool_calls"] = calls
            choice = {"index": candidate.get("index", position), "message": message,
                      "finish_reason": _finish_reason(candidate.get("finishReason"), bool(calls))}
            if candidate.get("logprobsResult"):
                choice["logprobs"] = logprobs_content(candidate["logprobsResult"])
            choices.append(choice)
        return {"id": data.get("responseId") or f"chatcmpl-{_rng.getrandbits(96):024x}",
                "object": "chat.completion", "created": int(time.time()),
                "model": data.get("modelVersion") or self.model, "choices": choices,
                "usage": usage(data.get("usageMetadata") or {})}

    def stream_translator(self) -> GeminiStreamTranslator:
        return GeminiStreamTranslator(self.model, self.provider_name)


class GeminiStreamTranslator:
    """``streamGenerateContent`` events (each a partial ``GenerateContentResponse``) → OpenAI chunks, one at a time."""

    __slots__ = ("base", "provider_name", "started", "tool_counts", "usage")

    def __init__(self, model: str, provider_name: str) -> None:
        self.provider_name = provider_name
        self.base: dict[str, Any] = {"id": None, "object": "chat.completion.chunk", "created": int(time.time()),
                                     "model": model}
        self.started = False
        self.tool_counts: dict[int, int] = {}  # candidate index -> tool calls sent so far
        self.usage: dict[str, Any] | None = None

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        error = event.get("error")
        if isinstance(error, dict):
            raise google_error(int(error.get("code") or 500), error, self.provider_name)
        if event.get("usageMetadata"):
            self.usage = usage(event["usageMetadata"])
        candidates = event.get("candidates") or []
        chunks: list[dict[str, Any]] = []
        if not self.started:
            if not candidates and (event.get("promptFeedback") or {}).get("blockReason"):
                raise _no_candidates(event, self.provider_name)
            self.base["id"] = event.get("responseId") or f"chatcmpl-{_rng.getrandbits(96):024x}"
            if event.get("modelVersion"):
                self.base["model"] = event["modelVersion"]
            self.started = True
            chunks.append(self._chunk(0, {"role": "assistant", "content": ""}))
        for position, candidate in enumerate(candidates):
            index = int(candidate.get("index", position))
            first = len(chunks)
            for part in (candidate.get("content") or {}).get("parts") or ():
                if "functionCall" in part:
                    count = self.tool_counts.get(index, 0)
                    self.tool_counts[index] = count + 1
                    call = _tool_call(part)
                    chunks.append(self._chunk(index, {"tool_calls": [{"index": count, **call}]}))
                elif part.get("text"):
                    key = "reasoning_content" if part.get("thought") else "content"
                    chunks.append(self._chunk(index, {key: part["text"]}))
            if candidate.get("logprobsResult"):  # the tokens of this event's text, on its first chunk
                if len(chunks) == first:
                    chunks.append(self._chunk(index, {}))
                chunks[first]["choices"][0]["logprobs"] = logprobs_content(candidate["logprobsResult"])
            reason = candidate.get("finishReason")
            if reason:
                chunks.append(self._chunk(index, {}, _finish_reason(reason, index in self.tool_counts)))
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        """After the last event: the usage chunk (``choices: []``)."""
        if not self.started:
            raise UpstreamError(502, f"upstream {self.provider_name} ended the stream without an answer",
                                type="upstream_error", code="502")
        return [{**self.base, "choices": [], "usage": self.usage or usage({})}]

    def _chunk(self, index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}]}


class GeminiProvider(Provider):
    custom_llm_provider: ClassVar[str] = "gemini"
    price_provider: ClassVar[str | None] = "google"  # genai-prices' id for Gemini (and Vertex AI's Gemini) models
    Params = GeminiParams
    default_api_base: ClassVar[str | None] = "https://generativelanguage.googleapis.com"
    api_base_env: ClassVar[tuple[str, ...]] = ("GEMINI_API_BASE",)
    api_key_env: ClassVar[tuple[str, ...]] = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
    api_key_required: ClassVar[bool] = True
    supported_params: ClassVar[frozenset[str] | None] = GEMINI_PARAMS
    params: GeminiParams

    def __init__(self, deployment: Any, params: ProviderParams) -> None:
        super().__init__(deployment, params)
        model = deployment.upstream_model.removeprefix("models/")
        self.translation = GeminiTranslation(model, self.custom_llm_provider, self.params.safety_settings)
        base = (deployment.api_base or "").rstrip("/")
        # LiteLLM also takes an api_base that already ends at the model (a gateway in front of Google)
        model_url = base if "/models/" in base else f"{base}/v1beta/models/{quote(model, safe='')}"
        self.url = f"{model_url}:generateContent"
        self.stream_url = f"{model_url}:streamGenerateContent?alt=sse"
        headers = {"content-type": "application/json", "x-goog-api-key": deployment.api_key or ""}
        headers.update(self.params.extra_headers or {})
        self._head = encode_headers(headers)

    def accepted(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("parallel_tool_calls") is False:  # Gemini may always call several functions at once
            if not self.deployment.drop_params:
                raise ApiError(400, f"{self.custom_llm_provider} cannot turn off parallel tool calls "
                                    "(parallel_tool_calls: false); remove it, or set drop_params: true",
                               param="parallel_tool_calls", code="unsupported_params")
            body = {k: v for k, v in body.items() if k != "parallel_tool_calls"}
        return super().accepted(body)

    def error_from(self, status: int, content: bytes) -> UpstreamError:
        try:
            data = _decoder.decode(content)
        except (msgspec.DecodeError, UnicodeDecodeError):
            data = None
        if isinstance(data, list) and data and isinstance(data[0], dict):  # some front ends wrap it in a list
            data = data[0]
        error = data.get("error") if isinstance(data, dict) else None
        return google_error(status, error if isinstance(error, dict) else {}, self.custom_llm_provider)

    async def request_headers(self, request_id: str) -> bytes:
        """The head lines of an upstream request (Vertex AI adds its access token here)."""
        return self._head + request_id_header(request_id)

    async def complete(self, body: Mapping[str, Any], *, request_id: str) -> dict[str, Any]:
        payload = _json.encode(self.translation.request(body))
        content = await self.post(self.url, payload, await self.request_headers(request_id))
        try:
            data = _decoder.decode(content)
        except msgspec.DecodeError:
            raise UpstreamError(502, f"upstream {self.custom_llm_provider} returned a body that is not JSON",
                                type="upstream_error", code="502") from None
        if not isinstance(data, dict):
            raise UpstreamError(502, f"upstream {self.custom_llm_provider} returned an unexpected body",
                                type="upstream_error", code="502")
        return self.translation.response(data)

    async def stream(self, body: Mapping[str, Any], *, request_id: str) -> AsyncIterator[dict[str, Any]]:
        payload = _json.encode(self.translation.request(body))
        response = await self.post_stream(self.stream_url, payload, await self.request_headers(request_id))
        try:
            translator = self.translation.stream_translator()
            async for _event, data in self.sse_events(response):
                try:
                    event = _decoder.decode(data)
                except msgspec.DecodeError:
                    continue
                if isinstance(event, dict):
                    for chunk in translator.feed(event):
                        yield chunk
            for chunk in translator.finish():
                yield chunk
        finally:
            await response.aclose()


# translation helpers ----------------------------------------------------------------------------------
def google_error(status: int, error: Mapping[str, Any], provider: str) -> UpstreamError:
    """A Google API error (``{"error": {"code", "message", "status"}}``) as an OpenAI-shaped error."""
    google_status = str(error.get("status") or STATUS_CODES.get(status, ""))
    message = str(error.get("message") or f"upstream {provider} returned HTTP {status}")
    etype = ERROR_TYPES.get(google_status, "upstream_error")
    return UpstreamError(status, message, type=etype, code=google_status or str(status))


def _no_candidates(data: Mapping[str, Any], provider: str) -> UpstreamError:
    feedback = data.get("promptFeedback") or {}
    reason = feedback.get("blockReason")
    if reason:
        detail = feedback.get("blockReasonMessage")
        message = f"{provider} blocked the prompt ({reason})" + (f": {detail}" if detail else "")
        extra = {"block_reason": reason, "safety_ratings": feedback.get("safetyRatings") or []}
        return UpstreamError(400, message, type="content_policy_violation", param="messages",
                             code="content_filter", extra=extra)
    return UpstreamError(502, f"upstream {provider} returned no candidates", type="upstream_error", code="502")


def _finish_reason(reason: Any, called: bool) -> str:
    if reason in SAFETY_FINISH_REASONS:
        return "content_filter"
    mapped = FINISH_REASONS.get(str(reason), "stop")
    return "tool_calls" if called and mapped == "stop" else mapped


def usage(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``usageMetadata`` → OpenAI usage as LiteLLM reports it: thoughts are completion (and reasoning) tokens,
    cached content is part of the prompt and reported as cached tokens."""
    prompt = int(metadata.get("promptTokenCount") or 0)
    thoughts = int(metadata.get("thoughtsTokenCount") or 0)
    completion = int(metadata.get("candidatesTokenCount") or 0) + thoughts
    cached = int(metadata.get("cachedContentTokenCount") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": thoughts}}


def logprobs_content(result: Mapping[str, Any]) -> dict[str, Any]:
    """``logprobsResult`` → OpenAI's ``logprobs`` (``{content: [{token, logprob, bytes, top_logprobs}]}``): the
    chosen token of each step with the step's top candidates."""
    tops = result.get("topCandidates") or []
    content = []
    for step, chosen in enumerate(result.get("chosenCandidates") or ()):
        token = str(chosen.get("token") or "")
        alternatives = (tops[step].get("candidates") or ()) if step < len(tops) else ()
        content.append({"token": token, "logprob": float(chosen.get("logProbability") or 0.0),
                        "bytes": list(token.encode()),
                        "top_logprobs": [{"token": str(c.get("token") or ""),
                                          "logprob": float(c.get("logProbability") or 0.0),
                                          "bytes": list(str(c.get("token") or "").encode())} for c in alternatives]})
    return {"content": content}


def _tool_call(part: Mapping[str, Any]) -> dict[str, Any]:
    call = part.get("functionCall") or {}
    call_id = str(call.get("id") or _new_call_id())
    signature = part.get("thoughtSignature")
    if signature:
        call_id = f"{call_id}{THOUGHT_SEPARATOR}{signature}"
    return {"id": call_id, "type": "function",
            "function": {"name": call.get("name"), "arguments": _json.encode(call.get("args") or {}).decode()}}


def _text_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: expected a string or a list of content parts", param="messages")
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                parts.append({"text": part["text"]})
        else:
            raise ApiError(400, f"{where}: only text parts are allowed here", param="messages")
    return parts


def _image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise ApiError(400, f"{where}.image_url: expected {{url: ...}}", param="messages")
    given = image.get("format") if isinstance(image, dict) else None
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        mime_type = header[5:].split(";", 1)[0] or given or "image/png"
        if ";base64" not in header or not data:
            raise ApiError(400, f"{where}.image_url: data URLs must be base64-encoded", param="messages")
        return {"inlineData": {"mimeType": mime_type, "data": data}}
    if url.startswith(("http://", "https://", "gs://")):
        mime_type = given or mimetypes.guess_type(url.split("?", 1)[0])[0]
        if not mime_type:
            raise ApiError(400, f"{where}.image_url: cannot tell the media type of this URL; add "
                                "image_url.format (e.g. image/png)", param="messages")
        return {"fileData": {"mimeType": mime_type, "fileUri": url}}
    raise ApiError(400, f"{where}.image_url: expected a data: URL, an http(s) URL or a gs:// URI", param="messages")


def _base64(data: Any, where: str) -> str:
    if not isinstance(data, str) or not data:
        raise ApiError(400, f"{where}: expected base64 data", param="messages")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: not valid base64", param="messages") from None
    return data


def _audio(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    audio = part.get("input_audio")
    if not isinstance(audio, dict):
        raise ApiError(400, f"{where}.input_audio: expected {{data, format}}", param="messages")
    audio_format = str(audio.get("format") or "").lower()
    mime_type = AUDIO_MIME_TYPES.get(audio_format)
    if mime_type is None:
        raise ApiError(400, f"{where}.input_audio.format: expected one of {', '.join(AUDIO_MIME_TYPES)}, not "
                            f"{audio.get('format')!r}", param="messages")
    return {"inlineData": {"mimeType": mime_type, "data": _base64(audio.get("data"), f"{where}.input_audio.data")}}


def _file(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A ``file`` part: ``file_data`` (a base64 ``data:`` URL, or base64 with a ``filename`` or ``format`` that
    names its type) → ``inlineData``; ``file_id`` (a Files API URI or ``gs://``) → ``fileData``."""
    file = part.get("file")
    if not isinstance(file, dict):
        raise ApiError(400, f"{where}.file: expected {{file_data}} or {{file_id}}", param="messages")
    given = file.get("format") if isinstance(file.get("format"), str) else None
    filename = file.get("filename") if isinstance(file.get("filename"), str) else None
    data, file_id = file.get("file_data"), file.get("file_id")
    if data is not None:
        if isinstance(data, str) and data.startswith("data:"):
            header, _, data = data.partition(",")
            if ";base64" not in header:
                raise ApiError(400, f"{where}.file.file_data: data URLs must be base64-encoded", param="messages")
            mime_type = header[5:].split(";", 1)[0] or given
        else:
            mime_type = given or (mimetypes.guess_type(filename)[0] if filename else None)
        if not mime_type:
            raise ApiError(400, f"{where}.file.file_data: cannot tell the media type; send a data: URL "
                                "(data:application/pdf;base64,...) or add file.format", param="messages")
        return {"inlineData": {"mimeType": mime_type, "data": _base64(data, f"{where}.file.file_data")}}
    if isinstance(file_id, str) and file_id.startswith(("https://", "http://", "gs://")):
        file_data = {"fileUri": file_id}
        mime_type = given or mimetypes.guess_type(file_id.split("?", 1)[0])[0] or (
            mimetypes.guess_type(filename)[0] if filename else None)
        if mime_type:
            file_data["mimeType"] = mime_type
        return {"fileData": file_data}
    if file_id is not None:
        raise ApiError(400, f"{where}.file.file_id: expected a Gemini Files API URI (https://.../files/...) or a "
                            "gs:// URI", param="messages")
    raise ApiError(400, f"{where}.file: expected file_data or file_id", param="messages")


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return _text_parts(content, where)
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: expected a string or a list of content parts", param="messages")
    parts = []
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.extend(_text_parts([part], f"{where}[{number}]"))
        elif kind == "image_url":
            parts.append(_image(part, f"{where}[{number}]"))
        elif kind == "input_audio":
            parts.append(_audio(part, f"{where}[{number}]"))
        elif kind == "file":
            parts.append(_file(part, f"{where}[{number}]"))
        else:
            raise ApiError(400, f"{where}[{number}]: content part type {kind!r} is not supported by gemini",
                           param="messages")
    return parts


def _function_response(content: Any) -> dict[str, Any]:
    """A tool message's content as ``functionResponse.response`` (an object: JSON objects as they are, anything
    else under ``output``, Google's documented key)."""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if isinstance(content, str):
        try:
            value = _decoder.decode(content)
        except msgspec.DecodeError:
            return {"output": content}
        return value if isinstance(value, dict) else {"output": value}
    return {"output": content}


def _contents(messages: Any, provider: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages → (system parts, Gemini contents), consecutive same-role turns merged."""
    if not isinstance(messages, list):
        raise ApiError(400, "messages: expected a list", param="messages")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the functionResponse parts
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where}: each message must be an object", param="messages")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_text_parts(content, f"{where}.content"))
            continue
        if role == "user":
            turn, parts = "user", _user_parts(content, f"{where}.content")
        elif role == "assistant":
            turn, parts = "model", _text_parts(content, f"{where}.content")
            for call_number, call in enumerate(message.get("tool_calls") or ()):
                call_where = f"{where}.tool_calls[{call_number}]"
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not function.get("name"):
                    raise ApiError(400, f"{call_where}: expected {{id, type: function, function: {{name, "
                                        "arguments}}}}", param="messages")
                call_id = str(call.get("id") or "")
                names[call_id] = function["name"]
                converted: dict[str, Any] = {"functionCall": {
                    "name": function["name"], "args": tool_call_arguments(function.get("arguments"), call_where)}}
                _, separator, signature = call_id.partition(THOUGHT_SEPARATOR)
                if separator and signature:
                    converted["thoughtSignature"] = signature
                parts.append(converted)
        elif role in ("tool", "function"):
            call_id = str(message.get("tool_call_id") or "")
            name = names.get(call_id) or message.get("name")
            if not name:
                raise ApiError(400, f"{where}.tool_call_id: no earlier assistant tool call has this id",
                               param="messages")
            turn, parts = "user", [{"functionResponse": {"name": name, "response": _function_response(content)}}]
        else:
            raise ApiError(400, f"{where}.role: {role!r} is not supported by {provider}", param="messages")
        if not parts:
            continue
        if contents and contents[-1]["role"] == turn:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": turn, "parts": parts})
    return system, contents


def _declaration(tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ApiError(400, "tools: each tool must be {type: function, function: {name, parameters}}",
                       param="tools")
    declaration: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    parameters = function.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise ApiError(400, "tools: function.parameters must be a JSON Schema object", param="tools")
        if parameters.get("properties") or parameters.get("type") not in (None, "object"):
            declaration["parametersJsonSchema"] = parameters
    return declaration


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"mode": "AUTO"}
    if choice == "required":
        return {"mode": "ANY"}
    if choice == "none":
        return {"mode": "NONE"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    raise ApiError(400, "tool_choice: expected auto, required, none or {type: function, function: {name}}",
                   param="tool_choice")


def _response_format(value: Any) -> dict[str, Any]:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        schema = (value.get("json_schema") or {}).get("schema") if isinstance(value.get("json_schema"), dict) else None
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema: expected a JSON Schema object",
                           param="response_format")
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise ApiError(400, "response_format: expected {type: text | json_object | json_schema}",
                   param="response_format")
