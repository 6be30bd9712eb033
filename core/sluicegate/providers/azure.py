"""Azure OpenAI (``azure/<deployment>``): OpenAI's body and answers at Azure's URLs, with Azure's auth.

- Deployment API: ``{api_base}/openai/deployments/{deployment}/chat/completions?api-version={api_version}``.
- v1 API (``api_version: v1``, ``latest`` or ``preview``): ``{api_base}/openai/v1/chat/completions``, the
  deployment name as ``model`` (``?api-version=preview`` for ``preview``).
- Auth: ``api-key: <api_key>``, or ``Authorization: Bearer <azure_ad_token>``, or a Bearer token obtained from
  Entra ID with the client-credentials grant (``tenant_id`` / ``client_id`` / ``client_secret``), fetched when
  the gateway starts and refreshed in the background before it expires.

Bodies and answers are OpenAI's, so they pass as bytes (the fast path). Error answers are OpenAI-shaped too;
a content-filter refusal keeps Azure's ``code: content_filter`` and its ``innererror`` (which category fired).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import msgspec

from sluicegate.net.http import encode_headers
from sluicegate.providers.base import (
    Provider,
    ProviderClients,
    ProviderParams,
    SSEDecoder,
    UpstreamError,
    openai_error,
    request_id_header,
    with_query,
)
from sluicegate.providers.entra import EntraTokenSource
from sluicegate.providers.openai_compatible import upstream_body

__all__ = ("AzureParams", "AzureProvider")

_decoder = msgspec.json.Decoder()
V1_VERSIONS = ("v1", "latest", "preview")


class AzureParams(ProviderParams, frozen=True, kw_only=True, forbid_unknown_fields=True):
    api_version: str | None = None
    """Azure's ``api-version`` (e.g. ``2024-10-21``), or ``v1`` / ``latest`` / ``preview`` for the v1 API.
    Default: ``AZURE_API_VERSION``. Required."""
    azure_ad_token: str | None = None
    """An Entra ID token sent as ``Authorization: Bearer`` instead of ``api-key``. Default: ``AZURE_AD_TOKEN``."""
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    """Entra ID client credentials (an app registration); a token is fetched with them and refreshed before it
    expires. Defaults: ``AZURE_TENANT_ID``, ``AZURE_CLIENT_ID``, ``AZURE_CLIENT_SECRET``."""
    azure_scope: str | None = None
    """The token's scope (default ``https://cognitiveservices.azure.com/.default``)."""
    azure_authority_host: str | None = None
    """The Entra ID authority (default ``AZURE_AUTHORITY_HOST``, else ``https://login.microsoftonline.com``)."""
    extra_headers: dict[str, str] | None = None
    """Headers added to every upstream request."""


class AzureProvider(Provider):
    custom_llm_provider: ClassVar[str] = "azure"
    Params = AzureParams
    api_base_env: ClassVar[tuple[str, ...]] = ("AZURE_API_BASE",)
    api_key_env: ClassVar[tuple[str, ...]] = ("AZURE_OPENAI_API_KEY", "AZURE_API_KEY")
    api_base_required: ClassVar[bool] = True
    params_env: ClassVar[dict[str, tuple[str, ...]]] = {"api_version": ("AZURE_API_VERSION",),
                                                        "azure_ad_token": ("AZURE_AD_TOKEN",),
                                                        "tenant_id": ("AZURE_TENANT_ID",),
                                                        "client_id": ("AZURE_CLIENT_ID",),
                                                        "client_secret": ("AZURE_CLIENT_SECRET",),
                                                        "azure_authority_host": ("AZURE_AUTHORITY_HOST",)}
    endpoints: ClassVar[frozenset[str]] = frozenset({"chat/completions", "embeddings", "completions", "responses",
                                                     "images/generations", "audio/transcriptions", "audio/speech"})
    """Azure OpenAI has no ``moderations`` (its content filter runs on every call instead)."""
    params: AzureParams

    def __init__(self, deployment: Any, params: ProviderParams) -> None:
        super().__init__(deployment, params)
        version = self.params.api_version or ""
        token = self.params.azure_ad_token
        base = (deployment.api_base or "").rstrip("/")
        if base.endswith("/openai"):
            base = base[: -len("/openai")]
        if version in V1_VERSIONS:
            self._url_template = f"{base}/openai/v1/{{}}" + ("?api-version=preview" if version == "preview" else "")
        else:
            name = quote(deployment.upstream_model, safe="")
            self._url_template = (f"{base}/openai/deployments/{name}/{{}}?api-version={quote(version, safe='')}")
        # the Responses API is not per deployment: /openai/responses (the deployment is the body's model)
        self._resource_template = (f"{base}/openai/v1/{{}}" + ("?api-version=preview" if version == "preview" else "")
                                   if version in V1_VERSIONS else
                                   f"{base}/openai/{{}}?api-version={quote(version, safe='')}")
        self.url = self._url_template.format("chat/completions")
        headers = {"content-type": "application/json"}
        self.entra: EntraTokenSource | None = None
        p = self.params
        if deployment.api_key:
            headers["api-key"] = deployment.api_key
        elif token:
            headers["authorization"] = f"Bearer {token}"
        elif p.tenant_id and p.client_id and p.client_secret:
            self.entra = EntraTokenSource(what=f"model {deployment.model_name!r}", tenant_id=p.tenant_id,
                                          client_id=p.client_id, client_secret=p.client_secret, scope=p.azure_scope,
                                          authority_host=p.azure_authority_host, on_token=self._use_token)
        headers.update(self.params.extra_headers or {})
        self._head = encode_headers(headers)
        self._bare = encode_headers({k: v for k, v in headers.items() if k != "content-type"})
        self._auth = b""  # the Entra ID token's header line, swapped whole when the token is refreshed

    @classmethod
    def check(cls, deployment: Any, params: ProviderParams, environ: Mapping[str, str]) -> list[str]:
        problems = super().check(deployment, params, environ)
        assert isinstance(params, AzureParams)
        if not params.api_version:
            problems.append("api_version: required for azure (e.g. 2024-10-21, or v1; or set AZURE_API_VERSION)")
        entra = {"tenant_id": params.tenant_id, "client_id": params.client_id, "client_secret": params.client_secret}
        if not (deployment.api_key or params.azure_ad_token):
            if not any(entra.values()):
                problems.append("api_key: required for azure (or azure_ad_token, or tenant_id + client_id + "
                                "client_secret; or set AZURE_OPENAI_API_KEY, AZURE_API_KEY or AZURE_AD_TOKEN)")
            else:
                problems.extend(f"{name}: required for Entra ID client credentials (with "
                                f"{' and '.join(n for n in entra if n != name)})"
                                for name, value in entra.items() if not value)
        for field in ("azure_authority_host",):
            value = getattr(params, field)
            if value and not value.startswith(("http://", "https://")):
                problems.append(f"{field}: not an http(s) URL: {value!r}")
        return problems

    # lifecycle ----------------------------------------------------------------------------------------
    async def start(self, clients: ProviderClients) -> None:
        await super().start(clients)
        if self.entra is not None:
            await self.entra.start(clients.http, timeout=min(self.deployment.timeout, 30.0))

    async def aclose(self) -> None:
        if self.entra is not None:
            await self.entra.aclose()

    def _use_token(self, token: str) -> None:
        self._auth = encode_headers({"authorization": f"Bearer {token}"})

    def _headers(self, request_id: str, head: bytes | None = None) -> bytes:
        if self.entra is not None and not self._auth:
            reason = self.entra.last_error or "still being fetched"
            raise UpstreamError(503, f"azure: the Entra ID token is not available: {reason}",
                                type="service_unavailable", code="credentials_unavailable")
        return (self._head if head is None else head) + self._auth + request_id_header(request_id)

    def error_from(self, status: int, content: bytes) -> UpstreamError:
        error = openai_error(status, content, self.custom_llm_provider)
        if error.code in ("content_filter", "ResponsibleAIPolicyViolation"):
            error.code = "content_filter"
            error.type = "content_policy_violation"
            if not error.message or error.message.startswith("upstream azure returned"):
                error.message = "the request was refused by Azure's content filter"
        return error

    async def complete_bytes(self, body: dict[str, Any], raw: bytes | None, request_id: str) -> bytes:
        return await self.post(self.url, upstream_body(body, raw, self.deployment.upstream_model),
                               self._headers(request_id))

    async def open_stream(self, body: dict[str, Any], raw: bytes | None, request_id: str) -> Any:
        return await self.post_stream(self.url, upstream_body(body, raw, self.deployment.upstream_model),
                                      self._headers(request_id))

    async def endpoint_bytes(self, endpoint: str, body: dict[str, Any], raw: bytes | None,
                             request_id: str) -> bytes:
        if endpoint not in self.endpoints:
            raise self.unsupported(endpoint)
        return await self.post(self._url_template.format(endpoint),
                               upstream_body(body, raw, self.deployment.upstream_model), self._headers(request_id))

    async def forward(self, endpoint: str, body: bytes, request_id: str, *, path: str | None = None,
                      query: str = "", method: str = "POST", content_type: str | None = "application/json",
                      stream: bool = False) -> Any:
        if endpoint not in self.endpoints:
            raise self.unsupported(endpoint)
        template = self._resource_template if endpoint == "responses" else self._url_template
        head = self._head if content_type == "application/json" else self._bare + (
            encode_headers({"content-type": content_type}) if content_type else b"")
        return await self.send(method, with_query(template.format(path or endpoint), query), body,
                               self._headers(request_id, head), stream=stream)

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
