"""The provider contract: how a model's wire protocol plugs into the gateway.

A provider class speaks one upstream protocol for one ``custom_llm_provider`` name (the prefix of
``litellm_params.model``, LiteLLM's names). The gateway builds one instance per configured model at start-up,
with the model's :class:`~sluicegate.providers.models.Deployment` and its decoded ``Params``; the chat route then
asks that instance for answers without knowing which protocol is behind it.

A translating provider implements :meth:`Provider.complete` (an OpenAI ``chat.completion`` dict) and
:meth:`Provider.stream` (OpenAI ``chat.completion.chunk`` dicts as the upstream sends them). A provider whose
upstream already speaks OpenAI's wire format overrides :meth:`Provider.complete_bytes` and
:meth:`Provider.open_stream` instead and forwards bytes untouched (the fast path).
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import msgspec

from sluicegate.errors import ApiError
from sluicegate.net.http import HttpClient, HttpClientError, HttpTimeoutError, StreamedResponse

if TYPE_CHECKING:
    from sluicegate.providers.models import Deployment
    from sluicegate.providers.upstream import UpstreamClient

__all__ = ("GATEWAY_PARAMS", "ChunkStream", "Provider", "ProviderClients", "ProviderParams", "SSEDecoder", "UpstreamError",
           "forward_traceparent", "openai_error", "request_id_header", "tool_call_arguments", "with_query")

_json = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class UpstreamError(ApiError):
    """The upstream answered with an error status, or could not be reached in time."""


class ProviderParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of a provider's ``Params``: its own keys of ``litellm_params`` (LiteLLM's names), unknown keys refused.

    The keys every provider shares (``model``, ``api_base``, ``api_key``, ``timeout``, ``mock_response``, costs,
    ``drop_params``) are read by the core and reach the provider through its ``Deployment``. A secret field holds
    the resolved value (``os.environ/NAME`` is resolved when the config loads): never log it.
    """


class ProviderClients:
    """What the gateway hands each provider when it starts: the shared HTTP client (and, for the built-in
    OpenAI-compatible providers, the selectable upstream client that ``bench/`` compares)."""

    __slots__ = ("http", "upstream")

    def __init__(self, http: HttpClient, upstream: UpstreamClient | None = None) -> None:
        self.http = http
        self.upstream = upstream


GATEWAY_PARAMS = frozenset({"model", "messages", "stream", "stream_options", "metadata", "cache"})
"""Request keys every provider accepts: the gateway reads them itself (``metadata`` is LiteLLM's request tags)."""


def openai_error(status: int, content: bytes, provider: str) -> UpstreamError:
    """An upstream error answer in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``) as an
    :class:`UpstreamError`; any other body gives a generic message naming the provider and status."""
    message = f"upstream {provider} returned HTTP {status}"
    etype, param, code, extra = "upstream_error", None, str(status), None
    try:
        body = _decoder.decode(content)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            etype = str(error.get("type") or etype)
            param = error.get("param")
            code = error.get("code") if error.get("code") is not None else code
            inner = error.get("innererror") or error.get("inner_error")
            if isinstance(inner, dict):
                extra = {"innererror": inner}
        elif isinstance(error, str):
            message = error
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    return UpstreamError(status, message, type=etype, param=param, code=code, extra=extra)


class Provider(abc.ABC):
    """One upstream wire protocol, for one ``custom_llm_provider`` name.

    Class attributes declare the provider; the core reads them at start-up:

    - ``custom_llm_provider``: the prefix in ``litellm_params.model`` (``anthropic`` in ``anthropic/claude-...``).
    - ``Params``: a :class:`ProviderParams` subclass of the provider's own ``litellm_params`` keys.
    - ``default_api_base`` / ``api_base_env`` / ``api_key_env``: where ``api_base`` and ``api_key`` come from when
      the config does not set them (environment variables in order, read once at start-up).
    - ``api_base_required`` / ``api_key_required``: a missing one stops start-up naming the YAML path.
    - ``supported_params``: the OpenAI request keys the provider can take (``None``: any, it forwards the body).
      Others are a 400 naming them, or dropped with ``drop_params: true``.
    - ``price_provider``: the genai-prices provider whose prices apply (default: ``custom_llm_provider``).
    """

    custom_llm_provider: ClassVar[str] = ""
    Params: ClassVar[type[ProviderParams]] = ProviderParams
    default_api_base: ClassVar[str | None] = None
    api_base_env: ClassVar[tuple[str, ...]] = ()
    api_key_env: ClassVar[tuple[str, ...]] = ()
    api_base_required: ClassVar[bool] = False
    api_key_required: ClassVar[bool] = False
    params_env: ClassVar[dict[str, tuple[str, ...]]] = {}
    """``Params`` fields filled from environment variables (in order) when the config leaves them unset."""
    supported_params: ClassVar[frozenset[str] | None] = None
    takes_metadata: ClassVar[bool] = False
    """The upstream stores a request's ``metadata`` (OpenAI with ``store: true``): only then is it forwarded;
    otherwise the gateway keeps it for the log event and the upstream never sees it."""
    endpoints: ClassVar[frozenset[str]] = frozenset({"chat/completions"})
    """The OpenAI endpoints this provider's upstream serves in OpenAI's wire format (:meth:`forward`).
    ``completions`` and ``responses`` not listed here are translated to ``chat/completions`` by the gateway;
    any other endpoint not listed answers a 400 naming the provider and the endpoint."""
    price_provider: ClassVar[str | None] = None
    """The provider's id in the genai-prices table, where it differs from ``custom_llm_provider`` and genai-prices
    does not match that name itself (``fireworks_ai`` is ``fireworks`` there)."""

    def __init__(self, deployment: Deployment, params: ProviderParams) -> None:
        self.deployment = deployment
        self.params = params
        self.http: HttpClient | None = None

    # configuration (start-up) -------------------------------------------------------------------------
    @classmethod
    def check(cls, deployment: Deployment, params: ProviderParams, environ: Mapping[str, str]) -> list[str]:
        """Problems with this configuration as ``"field: reason"`` (checked at start-up, never per request).

        The base checks ``api_base`` / ``api_key`` against ``api_base_required`` / ``api_key_required``;
        override to add the provider's own rules (call ``super().check``)."""
        problems = []
        if cls.api_base_required and not deployment.api_base:
            env = f" (or set {' or '.join(cls.api_base_env)})" if cls.api_base_env else ""
            problems.append(f"api_base: required for {cls.custom_llm_provider}{env}")
        if cls.api_key_required and not deployment.api_key:
            env = f" (or set {' or '.join(cls.api_key_env)})" if cls.api_key_env else ""
            problems.append(f"api_key: required for {cls.custom_llm_provider}{env}")
        return problems

    # lifecycle ----------------------------------------------------------------------------------------
    async def start(self, clients: ProviderClients) -> None:
        """Called once when the gateway starts, on its event loop: keep the shared HTTP client."""
        self.http = clients.http

    async def aclose(self) -> None:
        """Called once when the gateway stops."""

    # the contract -------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def complete(self, body: Mapping[str, Any], *, request_id: str) -> dict[str, Any]:
        """Answer an OpenAI chat completion request (``body`` as the client sent it) with an OpenAI
        ``chat.completion`` dict (``usage`` included). Raise :class:`UpstreamError` (an OpenAI-shaped error)."""

    @abc.abstractmethod
    def stream(self, body: Mapping[str, Any], *, request_id: str) -> AsyncIterator[dict[str, Any]]:
        """Yield OpenAI ``chat.completion.chunk`` dicts as the upstream sends them (an async generator). The last
        one may carry ``usage``. An error before the first chunk becomes the HTTP answer; a later one ends the
        stream with an OpenAI error frame."""

    # what the chat route calls (override both for a byte-level fast path) -----------------------------
    async def complete_bytes(self, body: dict[str, Any], raw: bytes | None, request_id: str) -> bytes:
        """The answer as OpenAI JSON bytes."""
        return _json.encode(await self.complete(self.accepted(body), request_id=request_id))

    async def open_stream(self, body: dict[str, Any], raw: bytes | None, request_id: str) -> Any:
        """Start a streamed answer: an object with ``aiter_raw()`` (OpenAI SSE bytes) and ``aclose()``, returned
        once the upstream has accepted the request (its errors are raised here, before any byte is sent)."""
        chunks = self.stream(self.accepted(body), request_id=request_id)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await chunks.aclose()
            raise
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return ChunkStream(chunks, first, include_usage)

    async def endpoint_bytes(self, endpoint: str, body: dict[str, Any], raw: bytes | None,
                             request_id: str) -> bytes:
        """The answer of another OpenAI endpoint (``embeddings``, ...) as OpenAI JSON bytes. The base refuses it
        with a 400 naming the provider and the endpoint; a provider listing ``endpoint`` in ``endpoints``
        overrides this."""
        raise self.unsupported(endpoint)

    # Anthropic's Messages API (/v1/messages) -------------------------------------------------------------
    def speaks_messages(self) -> bool:
        """Whether this deployment's upstream takes Anthropic Messages requests itself (Claude on Anthropic,
        Vertex AI, Bedrock). Others are served through their chat contract, translated by
        :mod:`sluicegate.providers.messages_adapter`."""
        return False

    async def messages_bytes(self, body: dict[str, Any], request_id: str, beta: str | None) -> bytes:
        """A Messages request (``body`` as the client sent it, without the gateway's keys) answered as the
        upstream's Anthropic ``message`` JSON bytes. ``beta`` is the client's ``anthropic-beta`` header."""
        raise self.unsupported("messages")

    async def open_messages_stream(self, body: dict[str, Any], request_id: str, beta: str | None) -> Any:
        """Start a streamed Messages answer: an object with ``aiter_raw()`` (Anthropic SSE bytes) and ``aclose()``,
        returned once the upstream accepted the request (its errors are raised here)."""
        raise self.unsupported("messages")

    async def count_tokens_bytes(self, body: dict[str, Any], request_id: str, beta: str | None) -> bytes:
        """``/v1/messages/count_tokens`` answered by the upstream (``{"input_tokens": n}``); the base refuses it
        with a 400 naming the provider."""
        raise self.unsupported("messages/count_tokens")
    async def forward(self, endpoint: str, body: bytes, request_id: str, *, path: str | None = None,
                      query: str = "", method: str = "POST", content_type: str | None = "application/json",
                      stream: bool = False) -> Any:
        """Send ``body`` to the upstream's own ``endpoint`` unchanged (``completions``, ``responses``,
        ``images/generations``, ``audio/transcriptions``, ``audio/speech``, ``moderations``; ``path`` for a
        sub-resource such as ``responses/{id}``, with ``method`` ``GET`` or ``DELETE`` and an empty body;
        ``query``: an encoded query string to add).

        The answer's bytes; with ``stream`` a :class:`~sluicegate.net.http.StreamedResponse` once the upstream
        has accepted (its ``headers`` carry the media type; its errors are raised here, before any byte is
        relayed). Only for an endpoint listed in ``endpoints``: the base refuses with a 400 naming the provider
        and the endpoint, and the gateway translates ``completions`` and ``responses`` to chat for a provider
        that serves ``chat/completions`` only."""
        raise self.unsupported(endpoint)

    def unsupported(self, endpoint: str) -> ApiError:
        return ApiError(400, f"provider {self.custom_llm_provider} (model {self.deployment.model_name!r}) does "
                             f"not support /v1/{endpoint}", param="model", code="unsupported_endpoint")

    def accepted(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` without what this provider cannot take when ``drop_params`` is on; else a 400 naming them."""
        supported = self.supported_params
        if supported is None:
            return body
        unsupported = [k for k, v in body.items() if v is not None and k not in supported and k not in GATEWAY_PARAMS]
        if not unsupported:
            return body
        if self.deployment.drop_params:
            return {k: v for k, v in body.items() if k not in unsupported}
        names = ", ".join(sorted(unsupported))
        raise ApiError(400, f"{self.custom_llm_provider} does not support the parameter(s) {names}; remove them, "
                            "or set drop_params: true (litellm_settings, or the model's litellm_params) to drop "
                            "them", param=sorted(unsupported)[0], code="unsupported_params")

    # helpers for subclasses ---------------------------------------------------------------------------
    def error_from(self, status: int, content: bytes) -> UpstreamError:
        """Map an upstream error answer to an OpenAI-shaped error; override for non-OpenAI error bodies."""
        return openai_error(status, content, self.custom_llm_provider)

    def upstream_error(self, status: int, headers: Mapping[str, str], content: bytes) -> UpstreamError:
        """The error for an upstream answer with ``status`` >= 400: :meth:`error_from` of its body; override where
        the error's kind travels in a header (Bedrock's ``x-amzn-errortype``)."""
        return self.error_from(status, content)

    def _timed_out(self) -> UpstreamError:
        return UpstreamError(504, f"upstream {self.custom_llm_provider} timed out after "
                                  f"{self.deployment.timeout:g}s", type="timeout", code="504")

    def _unreachable(self, exc: BaseException) -> UpstreamError:
        reason = f"{exc.kind} failed" if isinstance(exc, HttpClientError) else type(exc).__name__
        return UpstreamError(502, f"upstream {self.custom_llm_provider} unreachable: {reason}",
                             type="upstream_unreachable", code="502")

    async def post(self, url: str, payload: bytes, headers: bytes) -> bytes:
        """POST ``payload`` with pre-encoded ``headers`` (:func:`sluicegate.net.http.encode_headers`): the
        answer's body, or an :class:`UpstreamError` (mapped by :meth:`error_from`, 502 unreachable, 504 timeout)."""
        assert self.http is not None, "provider used before the gateway started"
        try:
            response = await self.http.post(url, payload, headers=headers, timeout=self.deployment.timeout)
        except HttpTimeoutError:
            raise self._timed_out() from None
        except HttpClientError as exc:
            raise self._unreachable(exc) from None
        if response.status >= 400:
            raise self.upstream_error(response.status, response.headers, response.body)
        return response.body

    async def post_stream(self, url: str, payload: bytes, headers: bytes) -> StreamedResponse:
        """Like :meth:`post`, returning once the answer's head has arrived; its body is read as it comes."""
        assert self.http is not None, "provider used before the gateway started"
        try:
            response = await self.http.stream("POST", url, body=payload, headers=headers,
                                              timeout=self.deployment.timeout)
        except HttpTimeoutError:
            raise self._timed_out() from None
        except HttpClientError as exc:
            raise self._unreachable(exc) from None
        if response.status >= 400:
            try:
                content = await response.read()
            except HttpClientError:
                content = b""
            finally:
                await response.aclose()
            raise self.upstream_error(response.status, response.headers, content)
        return response

    async def send(self, method: str, url: str, payload: bytes, headers: bytes, *, stream: bool = False) -> Any:
        """:meth:`post` / :meth:`post_stream` for any method (``GET`` and ``DELETE`` of a stored resource)."""
        if method == "POST":
            return await (self.post_stream(url, payload, headers) if stream else self.post(url, payload, headers))
        assert self.http is not None, "provider used before the gateway started"
        try:
            response = await self.http.request(method, url, body=payload, headers=headers,
                                               timeout=self.deployment.timeout)
        except HttpTimeoutError:
            raise self._timed_out() from None
        except HttpClientError as exc:
            raise self._unreachable(exc) from None
        if response.status >= 400:
            raise self.upstream_error(response.status, response.headers, response.body)
        return response.body

    async def sse_events(self, response: StreamedResponse) -> AsyncIterator[tuple[str | None, bytes]]:
        """The server-sent events of a streamed answer as ``(event, data)`` as each arrives; stream failures
        become :class:`UpstreamError` (504 timeout, 502 broken off)."""
        decoder = SSEDecoder()
        try:
            async for data in response.aiter_raw():
                for event in decoder.feed(data):
                    yield event
        except HttpTimeoutError:
            raise self._timed_out() from None
        except HttpClientError as exc:
            raise self._unreachable(exc) from None


class SSEDecoder:
    """Splits a byte stream into server-sent events: ``(event name or None, data bytes)`` per event."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[str | None, bytes]]:
        buffer = self._buffer + data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *blocks, self._buffer = buffer.split(b"\n\n")
        events = []
        for block in blocks:
            name: str | None = None
            lines = []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    lines.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b"event:"):
                    name = line[6:].strip().decode("utf-8", "replace")
            if lines:
                events.append((name, b"\n".join(lines)))
        return events


class ChunkStream:
    """A translating provider's chunks as OpenAI SSE bytes, each relayed as soon as the provider yields it.

    ``usage`` holds the last usage seen (for the log event) whether or not the client asked for it; the client
    gets a usage chunk only with ``stream_options.include_usage``, as from OpenAI. An :class:`ApiError` after the
    first chunk ends the stream with an OpenAI error frame (the OpenAI SDKs raise it as an ``APIError``).
    """

    __slots__ = ("_chunks", "_first", "_include_usage", "usage")

    def __init__(self, chunks: AsyncIterator[dict[str, Any]], first: dict[str, Any] | None,
                 include_usage: bool) -> None:
        self._chunks = chunks
        self._first = first
        self._include_usage = include_usage
        self.usage: dict[str, Any] | None = None

    def _frame(self, chunk: dict[str, Any]) -> bytes | None:
        usage = chunk.get("usage")
        if usage is not None:
            self.usage = usage
            if not self._include_usage:
                if not chunk.get("choices"):
                    return None
                chunk = {k: v for k, v in chunk.items() if k != "usage"}
        return b"data: " + _json.encode(chunk) + b"\n\n"

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        if self._first is not None:
            frame = self._frame(self._first)
            self._first = None
            if frame is not None:
                yield frame
        try:
            async for chunk in self._chunks:
                frame = self._frame(chunk)
                if frame is not None:
                    yield frame
        except ApiError as exc:
            yield b"data: " + exc.body() + b"\n\n"
            return
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]


def with_query(url: str, query: str) -> str:
    """``url`` with ``query`` (already encoded) added to any query it has."""
    if not query:
        return url
    return f"{url}{'&' if '?' in url else '?'}{query}"


_TRACE_LINE: ContextVar[bytes] = ContextVar("sluicegate_traceparent", default=b"")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def forward_traceparent(value: str | None) -> None:
    """Send the client's W3C ``traceparent`` on with this request's upstream calls (the request's task only: each
    request runs in its own context). A value that is not a W3C trace context is not forwarded."""
    if value and _TRACEPARENT.fullmatch(value):
        _TRACE_LINE.set(b"traceparent: " + value.encode() + b"\r\n")


def request_id_header(request_id: str) -> bytes:
    """``x-request-id`` as a head line (request ids are printable; non-ASCII ones go percent-encoded), and the
    client's ``traceparent`` when it sent one (:func:`forward_traceparent`)."""
    rid = request_id.encode() if request_id.isascii() else quote(request_id, safe="").encode()
    return b"x-request-id: " + rid + b"\r\n" + _TRACE_LINE.get()


def tool_call_arguments(raw: Any, where: str = "messages") -> dict[str, Any]:
    """An OpenAI tool call's ``function.arguments`` (a JSON text, or already an object) as the object a native
    API takes (Anthropic ``input``, Bedrock ``toolUse.input``, Gemini ``functionCall.args``); empty means ``{}``.

    Raises a 400 naming ``where`` when the text is not JSON or not a JSON object.
    """
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        value = _decoder.decode(raw)
    except (msgspec.DecodeError, TypeError):
        raise ApiError(400, f"{where}.function.arguments: not valid JSON", param="messages") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"{where}.function.arguments: expected a JSON object", param="messages")
    return value
