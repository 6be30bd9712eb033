"""OpenAI's wire protocol: OpenAI itself and every vendor that serves the same ``/chat/completions``.

The fast path: the client's body goes upstream as the bytes it came in (re-encoded only when the model name must
change), and the upstream's answer comes back as its bytes, streamed or not, over the gateway's selectable
upstream client (``SLUICEGATE_HTTP_CLIENT``). Nothing is parsed here; the chat route reads the answer once for
the log event.

One class per LiteLLM prefix, each with LiteLLM's default base and environment variables.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from sluicegate.net.http import encode_headers
from sluicegate.providers.base import (
    Provider,
    ProviderClients,
    ProviderParams,
    SSEDecoder,
    request_id_header,
    with_query,
)

if TYPE_CHECKING:
    from sluicegate.providers.upstream import UpstreamClient

__all__ = ("OPENAI_COMPATIBLE", "OPENAI_ENDPOINTS", "VENDOR_ENDPOINTS", "OpenAICompatibleParams", "OpenAICompatibleProvider", "openai_compatible_providers")

_json = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class OpenAICompatibleParams(ProviderParams, frozen=True, kw_only=True, forbid_unknown_fields=True):
    organization: str | None = None
    """Sent as ``OpenAI-Organization`` (OpenAI's key; LiteLLM's name)."""
    extra_headers: dict[str, str] | None = None
    """Headers added to every upstream request."""


def upstream_body(body: Mapping[str, Any], raw: bytes | None, upstream_model: str) -> bytes:
    """The client's bytes as they came when nothing needs changing (the common case), else re-encoded."""
    if raw is not None and body.get("model") == upstream_model:
        return raw
    return _json.encode({**body, "model": upstream_model})


OPENAI_ENDPOINTS = frozenset({"chat/completions", "embeddings", "completions", "responses", "images/generations",
                              "audio/transcriptions", "audio/speech", "moderations"})
"""What OpenAI itself serves."""
VENDOR_ENDPOINTS = frozenset({"chat/completions", "embeddings", "completions"})
"""What the OpenAI-compatible vendors serve in common (their ``responses`` are translated to chat, which every one
of them serves; the rest is refused by name)."""


class OpenAICompatibleProvider(Provider):
    """``openai/<model>``, with any ``api_base`` (LiteLLM: ``OPENAI_BASE_URL`` / ``OPENAI_API_BASE``,
    ``OPENAI_API_KEY``)."""

    custom_llm_provider: ClassVar[str] = "openai"
    Params = OpenAICompatibleParams
    default_api_base: ClassVar[str | None] = "https://api.openai.com/v1"
    api_base_env: ClassVar[tuple[str, ...]] = ("OPENAI_BASE_URL", "OPENAI_API_BASE")
    api_key_env: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY",)
    takes_metadata: ClassVar[bool] = True
    endpoints: ClassVar[frozenset[str]] = OPENAI_ENDPOINTS
    params: OpenAICompatibleParams

    def __init__(self, deployment: Any, params: ProviderParams) -> None:
        super().__init__(deployment, params)
        self.upstream: UpstreamClient | None = None
        headers = dict(self.params.extra_headers or {})
        if self.params.organization:
            headers["OpenAI-Organization"] = self.params.organization
        self.deployment.extra_headers = headers or None
        head = dict(headers)
        if deployment.api_key:
            head["authorization"] = f"Bearer {deployment.api_key}"
        self._bare = encode_headers(head)  # without a content type: uploads name their own (multipart)
        self._head = encode_headers({"content-type": "application/json", **head})
        self._base = (deployment.api_base or "").rstrip("/")

    async def start(self, clients: ProviderClients) -> None:
        await super().start(clients)
        self.upstream = clients.upstream

    async def complete_bytes(self, body: dict[str, Any], raw: bytes | None, request_id: str) -> bytes:
        assert self.upstream is not None, "provider used before the gateway started"
        return await self.upstream.complete(self.deployment, upstream_body(body, raw, self.deployment.upstream_model),
                                            request_id)

    async def open_stream(self, body: dict[str, Any], raw: bytes | None, request_id: str) -> Any:
        assert self.upstream is not None, "provider used before the gateway started"
        return await self.upstream.open_stream(
            self.deployment, upstream_body(body, raw, self.deployment.upstream_model), request_id)

    async def endpoint_bytes(self, endpoint: str, body: dict[str, Any], raw: bytes | None,
                             request_id: str) -> bytes:
        if endpoint not in self.endpoints:
            raise self.unsupported(endpoint)
        return await self.post(f"{self._base}/{endpoint}", upstream_body(body, raw, self.deployment.upstream_model),
                               self._head + request_id_header(request_id))

    async def forward(self, endpoint: str, body: bytes, request_id: str, *, path: str | None = None,
                      query: str = "", method: str = "POST", content_type: str | None = "application/json",
                      stream: bool = False) -> Any:
        if endpoint not in self.endpoints:
            raise self.unsupported(endpoint)
        head = self._head if content_type == "application/json" else self._bare + (
            encode_headers({"content-type": content_type}) if content_type else b"")
        return await self.send(method, with_query(f"{self._base}/{path or endpoint}", query), body,
                               head + request_id_header(request_id), stream=stream)

    async def complete(self, body: Mapping[str, Any], *, request_id: str) -> dict[str, Any]:
        return _decoder.decode(await self.complete_bytes(dict(body), None, request_id))

    async def stream(self, body: Mapping[str, Any], *, request_id: str) -> AsyncIterator[dict[str, Any]]:
        response = await self.open_stream(dict(body), None, request_id)
        decoder = SSEDecoder()
        try:
            async for data in response.aiter_raw():
                for _, payload in decoder.feed(data):
                    if payload.strip() == b"[DONE]":
                        return
                    yield _decoder.decode(payload)
        finally:
            await response.aclose()


OPENAI_COMPATIBLE: tuple[tuple[str, str | None, tuple[str, ...], tuple[str, ...]], ...] = (
    # (prefix, default api_base, api_base env, api_key env): LiteLLM's values
    ("groq", "https://api.groq.com/openai/v1", ("GROQ_API_BASE",), ("GROQ_API_KEY",)),
    ("mistral", "https://api.mistral.ai/v1", ("MISTRAL_AZURE_API_BASE",), ("MISTRAL_AZURE_API_KEY", "MISTRAL_API_KEY")),
    ("deepseek", "https://api.deepseek.com/beta", ("DEEPSEEK_API_BASE",), ("DEEPSEEK_API_KEY",)),
    ("together_ai", "https://api.together.xyz/v1", ("TOGETHER_AI_API_BASE",),
     ("TOGETHER_API_KEY", "TOGETHER_AI_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_TOKEN")),
    ("fireworks_ai", "https://api.fireworks.ai/inference/v1", ("FIREWORKS_API_BASE",),
     ("FIREWORKS_API_KEY", "FIREWORKS_AI_API_KEY", "FIREWORKSAI_API_KEY", "FIREWORKS_AI_TOKEN")),
    ("openrouter", "https://openrouter.ai/api/v1", ("OPENROUTER_API_BASE",), ("OPENROUTER_API_KEY", "OR_API_KEY")),
    ("xai", "https://api.x.ai/v1", ("XAI_API_BASE",), ("XAI_API_KEY",)),
    ("perplexity", "https://api.perplexity.ai", ("PERPLEXITY_API_BASE",),
     ("PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY")),
    ("cerebras", "https://api.cerebras.ai/v1", ("CEREBRAS_API_BASE",), ("CEREBRAS_API_KEY",)),
    # Ollama's OpenAI-compatible route (LiteLLM's default base is the server root; its OpenAI API is under /v1)
    ("ollama", "http://localhost:11434/v1", ("OLLAMA_API_BASE",), ("OLLAMA_API_KEY",)),
    ("ollama_chat", "http://localhost:11434/v1", ("OLLAMA_API_BASE",), ("OLLAMA_API_KEY",)),
    ("hosted_vllm", None, ("HOSTED_VLLM_API_BASE",), ("HOSTED_VLLM_API_KEY",)),
    ("lm_studio", None, ("LM_STUDIO_API_BASE",), ("LM_STUDIO_API_KEY",)),
)


_PRICE_PROVIDERS = {"fireworks_ai": "fireworks"}
"""genai-prices' ids that its own matching does not find from LiteLLM's prefix."""


class _OllamaProvider(OpenAICompatibleProvider):
    """Ollama's base may be written as the server root (LiteLLM's form): its OpenAI API lives under ``/v1``."""

    def __init__(self, deployment: Any, params: ProviderParams) -> None:
        base = (deployment.api_base or "").rstrip("/")
        if base and not base.endswith("/v1"):
            deployment.api_base = base + "/v1"
        super().__init__(deployment, params)


def openai_compatible_providers() -> list[type[OpenAICompatibleProvider]]:
    """``openai`` and one subclass per vendor of :data:`OPENAI_COMPATIBLE`."""
    classes: list[type[OpenAICompatibleProvider]] = [OpenAICompatibleProvider]
    for name, base, base_env, key_env in OPENAI_COMPATIBLE:
        parent = _OllamaProvider if name.startswith("ollama") else OpenAICompatibleProvider
        classes.append(type(f"{name.title().replace('_', '')}Provider", (parent,), {
            "__doc__": f"``{name}/<model>``: OpenAI's wire protocol at {base or 'your api_base'}.",
            "custom_llm_provider": name, "default_api_base": base, "api_base_env": base_env,
            "api_key_env": key_env, "api_base_required": base is None,
            "price_provider": _PRICE_PROVIDERS.get(name), "takes_metadata": False, "endpoints": VENDOR_ENDPOINTS,
            "__module__": __name__}))
    return classes
