"""Vertex AI (``vertex_ai/<model>``): Gemini and Anthropic models on Google Cloud, with Google credentials.

- Gemini models: Gemini's translation (``gemini.py``) at
  ``{base}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent``
  (``:streamGenerateContent?alt=sse`` for streams).
- Claude models (``vertex_ai/claude-...``): the Anthropic translation (``anthropic.py``) at
  ``.../publishers/anthropic/models/{model}:rawPredict`` (``:streamRawPredict``), the body without ``model`` and
  with ``anthropic_version: vertex-2023-10-16``.

``base`` is ``https://{location}-aiplatform.googleapis.com`` (``https://aiplatform.googleapis.com`` for the
``global`` location) unless ``api_base`` says otherwise. Requests carry ``Authorization: Bearer <token>`` from
:class:`~sluicegate.providers.google_auth.AccessTokens`: the credentials (``vertex_credentials``, else application
default credentials) are loaded at start-up and their token refreshed in the background.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import msgspec

from sluicegate.errors import ApiError
from sluicegate.net.http import encode_headers
from sluicegate.providers.anthropic import AnthropicParams, AnthropicProvider, _StreamTranslator
from sluicegate.providers.base import ProviderClients, ProviderParams, UpstreamError, request_id_header
from sluicegate.providers.gemini import GEMINI_PARAMS, GeminiProvider, GeminiTranslation, google_error
from sluicegate.providers.google_auth import AccessTokens, CredentialsProblem, TokenError, load_credentials

__all__ = ("VertexAIParams", "VertexAIProvider")

_json = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
DEFAULT_LOCATION = "us-central1"


class VertexAIParams(ProviderParams, frozen=True, kw_only=True, forbid_unknown_fields=True):
    vertex_project: str | None = None
    """The Google Cloud project. Default: ``VERTEXAI_PROJECT``, else the project the credentials name."""
    vertex_location: str | None = None
    """The region (``us-central1``, ``europe-west4``, ``global``...). Default: ``VERTEXAI_LOCATION``, else us-central1."""
    vertex_credentials: str | dict[str, Any] | None = None
    """A google-auth key (service account, ...) as JSON text or a mapping, or the path of a JSON key file.
    Default: ``VERTEXAI_CREDENTIALS``, else application default credentials. A secret: never logged."""
    vertex_ai_project: str | None = None
    """LiteLLM's older name of ``vertex_project``."""
    vertex_ai_location: str | None = None
    """LiteLLM's older name of ``vertex_location``."""
    safety_settings: list[dict[str, Any]] | None = None
    """Gemini models: sent as ``safetySettings``."""
    extra_headers: dict[str, str] | None = None
    """Headers added to every upstream request."""


def _is_claude(model: str) -> bool:
    return model.startswith("claude")


def _resolve(params: VertexAIParams) -> tuple[Any, str, str]:
    """``(credentials, project, location)``; raises :class:`CredentialsProblem` naming the field."""
    credentials, credentials_project = load_credentials(params.vertex_credentials)
    project = params.vertex_ai_project or params.vertex_project or credentials_project
    if not project:
        raise CredentialsProblem("vertex_project: required for vertex_ai (or set VERTEXAI_PROJECT); the "
                                 "credentials name no project")
    location = params.vertex_ai_location or params.vertex_location or DEFAULT_LOCATION
    return credentials, project, location


class VertexAIProvider(GeminiProvider):
    custom_llm_provider: ClassVar[str] = "vertex_ai"
    Params = VertexAIParams
    default_api_base: ClassVar[str | None] = None
    api_base_env: ClassVar[tuple[str, ...]] = ()
    api_key_env: ClassVar[tuple[str, ...]] = ()
    api_key_required: ClassVar[bool] = False
    params_env: ClassVar[dict[str, tuple[str, ...]]] = {"vertex_project": ("VERTEXAI_PROJECT",),
                                                        "vertex_location": ("VERTEXAI_LOCATION",),
                                                        "vertex_credentials": ("VERTEXAI_CREDENTIALS",)}
    supported_params: ClassVar[frozenset[str] | None] = GEMINI_PARAMS
    params: VertexAIParams  # type: ignore[assignment]

    def __init__(self, deployment: Any, params: ProviderParams) -> None:
        assert isinstance(params, VertexAIParams)
        self.deployment = deployment
        self.params = params  # type: ignore[assignment]
        self.http = None
        credentials, self.project, self.location = _resolve(params)
        self.tokens = AccessTokens(credentials, name=f"vertex_ai/{deployment.model_name}")
        model = deployment.upstream_model.removeprefix("models/")
        if not deployment.api_base:
            host = "aiplatform.googleapis.com" if self.location == "global" else \
                f"{self.location}-aiplatform.googleapis.com"
            deployment.api_base = f"https://{host}"
        base = deployment.api_base.rstrip("/")
        publisher = "anthropic" if _is_claude(model) else "google"
        # LiteLLM also takes an api_base that already ends at the model (a gateway in front of Vertex)
        model_url = base if "/models/" in base else (
            f"{base}/v1/projects/{quote(self.project, safe='')}/locations/{quote(self.location, safe='')}"
            f"/publishers/{publisher}/models/{quote(model, safe='')}")
        headers = {"content-type": "application/json"}
        headers.update(params.extra_headers or {})
        self._head = encode_headers(headers)
        self.claude: VertexClaude | None = None
        if _is_claude(model):
            self.claude = VertexClaude(self, model_url)
            self.translation = GeminiTranslation(model, self.custom_llm_provider, None)
            self.url = self.stream_url = model_url
        else:
            self.translation = GeminiTranslation(model, self.custom_llm_provider, params.safety_settings)
            self.url = f"{model_url}:generateContent"
            self.stream_url = f"{model_url}:streamGenerateContent?alt=sse"

    @classmethod
    def check(cls, deployment: Any, params: ProviderParams, environ: Mapping[str, str]) -> list[str]:
        problems = super().check(deployment, params, environ)
        assert isinstance(params, VertexAIParams)
        try:
            _resolve(params)
        except CredentialsProblem as exc:
            problems.append(str(exc))
        return problems

    async def start(self, clients: ProviderClients) -> None:
        await super().start(clients)
        if self.claude is not None:
            await self.claude.start(clients)
        self.tokens.start()

    async def aclose(self) -> None:
        await self.tokens.aclose()

    async def request_headers(self, request_id: str) -> bytes:
        try:
            token = await self.tokens.token(self.deployment.timeout)
        except (TokenError, TimeoutError) as exc:
            raise UpstreamError(401, f"vertex_ai: could not get an access token for the configured credentials "
                                     f"({exc})", type="authentication_error", code="401") from None
        return self._head + b"authorization: Bearer " + token.encode() + b"\r\n" + request_id_header(request_id)

    # Claude models answer through the Anthropic translation --------------------------------------------
    def accepted(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.claude is not None:
            return self.claude.accepted(body)
        return super().accepted(body)

    def speaks_messages(self) -> bool:
        return self.claude is not None

    async def messages_bytes(self, body: dict[str, Any], request_id: str, beta: str | None) -> bytes:
        if self.claude is None:
            raise self.unsupported("messages")
        return await self.claude.messages_bytes(body, request_id, beta)

    async def open_messages_stream(self, body: dict[str, Any], request_id: str, beta: str | None) -> Any:
        if self.claude is None:
            raise self.unsupported("messages")
        return await self.claude.open_messages_stream(body, request_id, beta)

    async def complete(self, body: Mapping[str, Any], *, request_id: str) -> dict[str, Any]:
        if self.claude is not None:
            return await self.claude.complete(body, request_id=request_id)
        return await super().complete(body, request_id=request_id)

    async def stream(self, body: Mapping[str, Any], *, request_id: str) -> AsyncIterator[dict[str, Any]]:
        chunks = self.claude.stream(body, request_id=request_id) if self.claude is not None else \
            super().stream(body, request_id=request_id)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]


class VertexClaude(AnthropicProvider):
    """Anthropic's Messages API as Vertex AI serves it: ``rawPredict`` / ``streamRawPredict``, the model in the
    URL, ``anthropic_version`` in the body, a Google access token instead of ``x-api-key``."""

    custom_llm_provider: ClassVar[str] = "vertex_ai"

    def __init__(self, owner: VertexAIProvider, model_url: str) -> None:
        super().__init__(owner.deployment, AnthropicParams(extra_headers=None))
        self.owner = owner
        self.url = f"{model_url}:rawPredict"
        self.stream_url = f"{model_url}:streamRawPredict"

    def accepted(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return super().accepted(body)
        except ApiError as exc:  # name the provider the client configured
            exc.message = exc.message.replace("anthropic does not", "vertex_ai (claude) does not")
            raise

    def translate_request(self, body: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
        request = super().translate_request(body, stream=stream)
        request.pop("model", None)
        request["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
        return request

    def messages_payload(self, body: dict[str, Any]) -> dict[str, Any]:
        """The client's Messages request as Vertex AI takes it: the model is in the URL, the version in the body."""
        payload = {k: v for k, v in body.items() if k != "model"}
        payload["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
        return payload

    async def messages_headers(self, request_id: str, beta: str | None) -> bytes:
        return await self.owner.request_headers(request_id) + self.beta_header(beta)

    def error_from(self, status: int, content: bytes) -> UpstreamError:
        try:
            data = _decoder.decode(content)
        except (msgspec.DecodeError, UnicodeDecodeError):
            data = None
        if isinstance(data, list) and data and isinstance(data[0], dict):
            data = data[0]
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and "status" in error:  # Google's front end (auth, quota, not found)
            return google_error(status, error, "vertex_ai")
        return super().error_from(status, content)

    async def complete(self, body: Mapping[str, Any], *, request_id: str) -> dict[str, Any]:
        payload = _json.encode(self.translate_request(body, stream=False))
        content = await self.post(self.url, payload, await self.owner.request_headers(request_id))
        try:
            message = _decoder.decode(content)
        except msgspec.DecodeError:
            raise UpstreamError(502, "upstream vertex_ai returned a body that is not JSON",
                                type="upstream_error", code="502") from None
        return self.translate_response(message)

    async def stream(self, body: Mapping[str, Any], *, request_id: str) -> AsyncIterator[dict[str, Any]]:
        payload = _json.encode(self.translate_request(body, stream=True))
        response = await self.post_stream(self.stream_url, payload, await self.owner.request_headers(request_id))
        try:
            translator = _StreamTranslator(self.deployment.upstream_model)
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
