"""The ``arize_phoenix`` and ``arize`` sinks: one OpenInference LLM span per event, exported over OTLP/HTTP protobuf.

Phoenix and Arize read OpenInference attributes (``openinference.span.kind``, ``llm.model_name``,
``llm.input_messages.N.message.content``, ``llm.token_count.*``, ...) and file spans into the project named by the
resource attribute ``openinference.project.name`` (Arize: ``model_id``), so each team's entry names its project
and its spans go there alone. As in the ``otel`` sink there is no ``TracerProvider`` (one thread and exporter per
destination): spans are written in the protobuf wire format directly (``sluicegate.sinks.protowire``) and posted
with the core's pooled HTTP client, shared by every instance on the event loop. An instance holds its parsed
settings and pre-encoded header lines only.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import urllib.parse
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from sluicegate import CallbackVars, HealthResult, SecretStr, Sink
from sluicegate.events import REDACTED
from sluicegate.net.http import HttpClient, HttpClientError, encode_headers
from sluicegate.sinks.protowire import field_fixed64, field_len, key_values, tag
from sluicegate.sinks.scrub import Scrubber

from sluicegate_arize_phoenix_sink import __version__

if TYPE_CHECKING:
    from sluicegate import LogEvent

__all__ = ("ArizePhoenixSink", "ArizePhoenixVars", "ArizeSink", "ArizeVars", "OpenInferenceExportError",
           "openinference_attributes", "problems")

PHOENIX_CLOUD = "https://app.phoenix.arize.com/v1/traces"
ARIZE_OTLP = "https://otlp.arize.com/v1/traces"
_USER_AGENT = f"sluicegate-arize-phoenix-sink/{__version__}"
_MAX_ATTRIBUTE_CHARS = 64_000
_HEALTH_TIMEOUT = 5.0
_T1, _T2, _T3, _T4, _T5 = (tag(n, 2) for n in (1, 2, 3, 4, 5))
_T6_VARINT, _T3_VARINT = tag(6, 0), tag(3, 0)
_T7_FIXED64, _T8_FIXED64, _T9, _T15 = tag(7, 1), tag(8, 1), tag(9, 2), tag(15, 2)
_SCOPE = field_len(_T1, b"sluicegate") + field_len(_T2, __version__.encode())


class ArizePhoenixVars(CallbackVars, frozen=True):
    """Callback variables of the ``arize_phoenix`` sink (the names of LiteLLM's ``PHOENIX_*`` settings)."""

    aliases = {"phoenix_collector_http_endpoint": "phoenix_collector_endpoint",
               "project_name": "phoenix_project_name"}
    phoenix_collector_endpoint: str = PHOENIX_CLOUD
    """Phoenix's OTLP traces URL; a bare origin (``http://phoenix:6006``) gets ``/v1/traces``."""
    phoenix_api_key: SecretStr | None = None
    """Sent as ``Authorization: Bearer``; needed by Phoenix Cloud and by a Phoenix with auth enabled."""
    phoenix_project_name: str = "default"
    """The Phoenix project the spans are filed under (one per team)."""


class ArizeVars(CallbackVars, frozen=True):
    """Callback variables of the ``arize`` sink (Arize's hosted OTLP endpoint; LiteLLM's names)."""

    aliases = {"arize_space_id": "arize_space_key"}
    arize_space_key: SecretStr
    """The space (``arize-space-id`` and ``space_id`` headers); LiteLLM's ``arize_space_id`` is accepted for it."""
    arize_api_key: SecretStr
    """The API key (``authorization`` and ``api_key`` headers)."""
    arize_project_name: str = "default"
    """The Arize project (model id) the spans are filed under."""
    arize_endpoint: str = ARIZE_OTLP
    """Arize's OTLP/HTTP traces URL."""


class OpenInferenceExportError(RuntimeError):
    """The collector refused or could not take a batch; the message names the sink and endpoint, never a key."""

    def __init__(self, message: str, *, kind: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code


# --- configuration -----------------------------------------------------------------------------------------


def traces_url(endpoint: str) -> str:
    """``endpoint`` with ``/v1/traces`` added to a bare origin; raises ``ValueError`` naming what is wrong."""
    text = endpoint.strip()
    if any(c <= " " or c == "\x7f" for c in text):
        raise ValueError("must not contain spaces or control characters")
    try:
        parsed = urllib.parse.urlsplit(text)
        port = parsed.port
    except ValueError:
        raise ValueError("is not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname or port == 0:
        raise ValueError("must be an http(s) URL of the collector (e.g. http://phoenix:6006/v1/traces)")
    if parsed.username is not None or parsed.password is not None or parsed.fragment:
        raise ValueError("must carry no credentials or fragment (put the key in its own variable)")
    if parsed.path in ("", "/"):
        return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, "/v1/traces", parsed.query, ""))
    return text


def _name_problem(value: Any) -> str | None:
    if isinstance(value, str) and (not value.strip() or len(value) > 256 or any(c < " " for c in value)):
        return "1-256 printable characters"
    return None


def problems(callback_name: str, callback_vars: Mapping[str, Any]) -> list[str]:
    """Configuration-time problems of either sink, as ``"field: reason"`` (no value is echoed)."""
    prefix = "phoenix" if callback_name == "arize_phoenix" else "arize"
    endpoint_field = "phoenix_collector_endpoint" if prefix == "phoenix" else "arize_endpoint"
    found = []
    endpoint = callback_vars.get(endpoint_field)
    if isinstance(endpoint, str):
        try:
            traces_url(endpoint)
        except ValueError as exc:
            found.append(f"{endpoint_field}: {exc}")
    project_field = f"{prefix}_project_name"
    problem = _name_problem(callback_vars.get(project_field))
    if problem:
        found.append(f"{project_field}: {problem}")
    for field in ("phoenix_api_key",) if prefix == "phoenix" else ("arize_space_key", "arize_api_key"):
        value = callback_vars.get(field)
        value = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(value, str) and (not value.strip() or any(c < " " or c > "~" for c in value)):
            found.append(f"{field}: must be printable ASCII without line breaks")
    return found


# --- events to OpenInference spans -------------------------------------------------------------------------


def _redacted(value: Any) -> bool:
    if isinstance(value, str):
        return value == REDACTED
    if isinstance(value, Mapping):
        return any(_redacted(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_redacted(v) for v in value)
    return False


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: the text ones, joined
        texts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
        return "\n".join(texts) if texts else _json(content)
    return _json(content)


def _json(value: Any) -> str:
    text = msgspec.json.encode(value, enc_hook=str).decode()
    return text[:_MAX_ATTRIBUTE_CHARS]


def openinference_attributes(event: LogEvent) -> dict[str, Any]:
    """The OpenInference attributes of the LLM span for ``event`` (``None`` values are left out)."""
    metadata = event.metadata
    attributes: dict[str, Any] = {
        "openinference.span.kind": "LLM",
        "llm.model_name": event.model_group or event.model,
        "llm.provider": event.custom_llm_provider,
        "llm.system": event.custom_llm_provider,
        "llm.token_count.prompt": event.prompt_tokens,
        "llm.token_count.completion": event.completion_tokens,
        "llm.token_count.total": event.total_tokens,
        "llm.cost.total": event.response_cost,
        "llm.invocation_parameters": _json(event.model_parameters) if event.model_parameters else None,
        "metadata": _json({"team_id": metadata.user_api_key_team_id, "team_alias": metadata.user_api_key_team_alias,
                           "key_alias": metadata.user_api_key_alias, "request_id": metadata.request_id,
                           "event_id": event.id, "call_type": event.call_type, "status": event.status,
                           "cache_hit": event.cache_hit, "stream": event.stream}),
    }
    messages = event.messages
    if isinstance(messages, list) and not _redacted(messages):
        attributes["input.value"] = _json(messages)
        attributes["input.mime_type"] = "application/json"
        for n, message in enumerate(messages):
            if isinstance(message, Mapping):
                attributes[f"llm.input_messages.{n}.message.role"] = message.get("role")
                attributes[f"llm.input_messages.{n}.message.content"] = _text(message.get("content"))
    response = event.response if isinstance(event.response, Mapping) else None
    choices = response.get("choices") if response is not None else None
    if isinstance(choices, list) and choices and not _redacted(choices):
        texts = []
        for n, choice in enumerate(choices):
            message = choice.get("message") or choice.get("delta") or {} if isinstance(choice, Mapping) else {}
            content = _text(message.get("content")) if isinstance(message, Mapping) else None
            attributes[f"llm.output_messages.{n}.message.role"] = message.get("role", "assistant") if isinstance(
                message, Mapping) else "assistant"
            attributes[f"llm.output_messages.{n}.message.content"] = content
            texts.append(content or "")
        attributes["output.value"] = "\n".join(texts)[:_MAX_ATTRIBUTE_CHARS]
        attributes["output.mime_type"] = "text/plain"
    if event.status == "failure" and event.error_str:
        attributes["exception.message"] = event.error_str[:1024]
    return {k: v for k, v in attributes.items() if v is not None}


def _ids(event: LogEvent) -> tuple[bytes, bytes]:
    """Trace and span id, stable for the event: a re-sent batch re-sends the same spans."""
    span = hashlib.sha256(f"span:{event.id}".encode()).digest()[:8]
    source = event.trace_id or event.metadata.request_id or event.id
    trace = hashlib.sha256(f"trace:{source}".encode()).digest()[:16]
    return trace, span


def wire_span(event: LogEvent) -> bytes:
    """One OTLP ``Span`` message, serialized (opentelemetry-proto trace/v1 field numbers)."""
    trace_id, span_id = _ids(event)
    start = int((event.startTime or time.time()) * 1e9)
    end = max(int((event.endTime or event.startTime or time.time()) * 1e9), start)
    parts = [field_len(_T1, trace_id), field_len(_T2, span_id),
             field_len(_T5, (event.call_type or "completion").encode()),
             _T6_VARINT + b"\x03",  # SPAN_KIND_CLIENT
             field_fixed64(_T7_FIXED64, start), field_fixed64(_T8_FIXED64, end),
             key_values(_T9, openinference_attributes(event).items())]
    if event.status == "failure":
        message = (event.error_str or "request failed")[:1024].encode()
        parts.append(field_len(_T15, field_len(_T2, message) + _T3_VARINT + b"\x02"))  # STATUS_CODE_ERROR
    else:
        parts.append(field_len(_T15, _T3_VARINT + b"\x01"))  # STATUS_CODE_OK
    return b"".join(parts)


# --- the sinks ---------------------------------------------------------------------------------------------


class _OpenInferenceSink(Sink):
    """What both sinks share: encoding, the export, the health check and the shared HTTP client."""

    max_batch_size = 200
    send_timeout = 15.0

    _clients: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HttpClient]] = weakref.WeakKeyDictionary()

    __slots__ = ("_url", "_resource", "_headers", "_display", "_secrets")

    def _setup(self, endpoint: str, secret_headers: Mapping[str, str], resource: Mapping[str, str],
               plain_headers: Mapping[str, str] | None = None) -> None:
        found = problems(self.callback_name, msgspec.structs.asdict(self.callback_vars))
        if found:
            raise ValueError("; ".join(found))
        self._url = traces_url(endpoint)
        parsed = urllib.parse.urlsplit(self._url)
        self._display = f"{self.callback_name}: {parsed.scheme}://{parsed.netloc}{parsed.path}"
        self._headers = encode_headers({**secret_headers, **(plain_headers or {}),
                                        "Content-Type": "application/x-protobuf"})
        self._secrets = tuple(dict.fromkeys(v for v in secret_headers.values() if v))
        # ResourceSpans.resource: Resource.attributes (field 1), encoded once.
        self._resource = field_len(_T1, key_values(_T1, resource.items()))

    def secret_forms(self) -> Iterable[str]:
        """The secret variables and each header value as sent (``Bearer <key>`` included)."""
        yield from super().secret_forms()
        yield from self._secrets

    @classmethod
    def _client(cls) -> HttpClient:
        loop = asyncio.get_running_loop()
        client = _OpenInferenceSink._clients.get(loop)
        if client is None or client.closed:
            client = _OpenInferenceSink._clients[loop] = HttpClient(user_agent=_USER_AGENT, max_per_origin=64,
                                                                    max_connections=256)
        return client

    def encode(self, batch: Sequence[LogEvent]) -> bytes:
        """The ``ExportTraceServiceRequest`` body for ``batch``."""
        scope_spans = field_len(_T1, _SCOPE) + b"".join(field_len(_T2, wire_span(e)) for e in batch)
        return field_len(_T1, self._resource + field_len(_T2, scope_spans))

    async def send(self, batch: Sequence[LogEvent]) -> None:
        if batch:
            await self._export(self.encode(batch), timeout=self.send_timeout * 0.9)

    async def _export(self, body: bytes, *, timeout: float) -> None:
        try:
            answer = await self._client().post(self._url, body, headers=self._headers, timeout=timeout,
                                               policy=self.destination_policy)
        except HttpClientError as exc:
            kind = "timeout" if exc.kind == "timeout" else "unreachable"
            raise OpenInferenceExportError(f"{self._display} {'did not answer in time' if kind == 'timeout' else 'unreachable'}"
                                           f" ({exc.kind})", kind=kind) from None
        if answer.status // 100 != 2:
            kind = "auth" if answer.status in (401, 403) else "rejected" if answer.status < 500 else "unavailable"
            snippet = Scrubber.for_sink(self).excerpt(answer.body, 200)
            raise OpenInferenceExportError(f"{self._display} answered HTTP {answer.status}: {snippet}", kind=kind,
                                           status_code=answer.status)

    async def health_check(self) -> HealthResult:
        """An export of no spans with the instance's credentials: reachability and authentication."""
        try:
            await asyncio.wait_for(self._export(b"", timeout=_HEALTH_TIMEOUT), _HEALTH_TIMEOUT + 1)
        except OpenInferenceExportError as exc:
            return HealthResult(healthy=False, details=str(exc), error_kind=exc.kind)
        except TimeoutError:
            return HealthResult(healthy=False, details=f"{self._display} did not answer in time", error_kind="timeout")
        return HealthResult(healthy=True, details=f"{self._display} accepted an empty export")

    async def aclose(self) -> None:
        """Nothing to release: instances share the client (see :meth:`shutdown`)."""

    @classmethod
    async def shutdown(cls) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        clients = _OpenInferenceSink._clients
        for other in [lp for lp in list(clients) if lp is not loop and lp.is_closed()]:
            clients.pop(other, None)
        client = clients.pop(loop, None) if loop is not None else None
        if client is not None:
            await client.aclose()


class ArizePhoenixSink(_OpenInferenceSink):
    """OpenInference spans to a Phoenix collector, filed under ``phoenix_project_name``."""

    callback_name = "arize_phoenix"
    Vars = ArizePhoenixVars
    callback_vars: ArizePhoenixVars
    __slots__ = ()

    def __init__(self, callback_vars: ArizePhoenixVars) -> None:
        super().__init__(callback_vars)
        key = callback_vars.phoenix_api_key
        headers = {"Authorization": f"Bearer {key.get_secret_value().strip()}"} if key else {}
        self._setup(callback_vars.phoenix_collector_endpoint, headers,
                    {"openinference.project.name": callback_vars.phoenix_project_name, "service.name": "sluicegate"})

    @classmethod
    def destinations(cls, callback_vars: CallbackVars) -> list[tuple[str, str]]:
        assert isinstance(callback_vars, ArizePhoenixVars)
        return [("phoenix_collector_endpoint", callback_vars.phoenix_collector_endpoint)]

    @classmethod
    def env_defaults(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """``PHOENIX_COLLECTOR_HTTP_ENDPOINT`` (or ``PHOENIX_COLLECTOR_ENDPOINT``), ``PHOENIX_API_KEY`` and
        ``PHOENIX_PROJECT_NAME``, LiteLLM's names, for a global ``arize_phoenix`` entry written without vars."""
        found: dict[str, Any] = {}
        endpoint = environ.get("PHOENIX_COLLECTOR_HTTP_ENDPOINT") or environ.get("PHOENIX_COLLECTOR_ENDPOINT")
        if endpoint:
            found["phoenix_collector_endpoint"] = endpoint
        if environ.get("PHOENIX_API_KEY"):
            found["phoenix_api_key"] = environ["PHOENIX_API_KEY"]
        if environ.get("PHOENIX_PROJECT_NAME"):
            found["phoenix_project_name"] = environ["PHOENIX_PROJECT_NAME"]
        return found


class ArizeSink(_OpenInferenceSink):
    """OpenInference spans to Arize's hosted OTLP endpoint, with the space and API key as headers."""

    callback_name = "arize"
    Vars = ArizeVars
    callback_vars: ArizeVars
    __slots__ = ()

    def __init__(self, callback_vars: ArizeVars) -> None:
        super().__init__(callback_vars)
        space = callback_vars.arize_space_key.get_secret_value().strip()
        key = callback_vars.arize_api_key.get_secret_value().strip()
        # The headers Arize's own exporter (arize-otel) sends: the current names, and the older ones its
        # endpoint still reads for exporters written before them.
        self._setup(callback_vars.arize_endpoint,
                    {"authorization": key, "api_key": key, "arize-space-id": space, "space_id": space},
                    {"openinference.project.name": callback_vars.arize_project_name,
                     "model_id": callback_vars.arize_project_name, "service.name": "sluicegate"},
                    plain_headers={"arize-interface": "otel"})

    @classmethod
    def destinations(cls, callback_vars: CallbackVars) -> list[tuple[str, str]]:
        assert isinstance(callback_vars, ArizeVars)
        return [("arize_endpoint", callback_vars.arize_endpoint)]

    @classmethod
    def env_defaults(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """``ARIZE_SPACE_KEY`` (or ``ARIZE_SPACE_ID``), ``ARIZE_API_KEY``, ``ARIZE_PROJECT_NAME`` and
        ``ARIZE_HTTP_ENDPOINT``, for a global ``arize`` entry written without vars."""
        names = {"ARIZE_SPACE_ID": "arize_space_key", "ARIZE_SPACE_KEY": "arize_space_key",
                 "ARIZE_API_KEY": "arize_api_key", "ARIZE_PROJECT_NAME": "arize_project_name",
                 "ARIZE_HTTP_ENDPOINT": "arize_endpoint"}
        return {var: environ[env] for env, var in names.items() if environ.get(env)}
