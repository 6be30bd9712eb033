"""The ``langfuse`` sink: one generation per event, sent to Langfuse's OTLP ingestion endpoint.

Every instance (one per Langfuse project, i.e. per distinct credentials) is a few hundred bytes: the
protobuf encoding is done here, and delivery goes through one pooled HTTP client per event loop
(``sluicegate.net.http``) shared by all instances, so 10,000 projects cost no more threads or sockets than
one. The ``langfuse`` SDK gives the attribute names (``LangfuseOtelSpanAttributes``) and the typed API client
used by the health check; its tracer, batch processor and threads are not used (they are per project and
thread-hungry).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import hashlib
import ipaddress
import logging
import math
import os
import re
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import msgspec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from sluicegate.sinks.base import CallbackVars, HealthResult, SecretStr, Sink
from sluicegate.net.http import HttpClient, HttpClientError, encode_headers
from sluicegate.sinks.destinations import DestinationPolicy, aiohttp_connector_factory
from sluicegate.sinks.protowire import RepeatedKeyValues, field_fixed64, field_len, key_values, tag
from sluicegate.sinks.scrub import Scrubber

from sluicegate_langfuse_sink import __version__


class Attr:
    """The span attribute names Langfuse reads, as the SDK names them (``langfuse.LangfuseOtelSpanAttributes``).

    Spelled out here rather than imported: importing ``langfuse`` costs ~0.13 s of CPU in every process that loads
    the plugin (``sluicegate serve``, its worker, its delivery process), whether or not a team uses Langfuse.
    ``tests/test_encoding.py`` holds each one equal to the installed SDK's.
    """

    AS_ROOT = "langfuse.internal.as_root"
    IS_APP_ROOT = "langfuse.internal.is_app_root"
    OBSERVATION_COMPLETION_START_TIME = "langfuse.observation.completion_start_time"
    OBSERVATION_COST_DETAILS = "langfuse.observation.cost_details"
    OBSERVATION_INPUT = "langfuse.observation.input"
    OBSERVATION_LEVEL = "langfuse.observation.level"
    OBSERVATION_METADATA = "langfuse.observation.metadata"
    OBSERVATION_MODEL = "langfuse.observation.model.name"
    OBSERVATION_MODEL_PARAMETERS = "langfuse.observation.model.parameters"
    OBSERVATION_OUTPUT = "langfuse.observation.output"
    OBSERVATION_STATUS_MESSAGE = "langfuse.observation.status_message"
    OBSERVATION_TYPE = "langfuse.observation.type"
    OBSERVATION_USAGE_DETAILS = "langfuse.observation.usage_details"
    TRACE_METADATA = "langfuse.trace.metadata"
    TRACE_NAME = "langfuse.trace.name"
    TRACE_SESSION_ID = "session.id"
    TRACE_TAGS = "langfuse.trace.tags"
    TRACE_USER_ID = "user.id"

if TYPE_CHECKING:
    import httpx

    from sluicegate.events import LogEvent

__all__ = (
    "DEFAULT_HOST",
    "INGESTION_PATH",
    "PROJECTS_PATH",
    "LangfuseDeliveryError",
    "LangfuseSink",
    "LangfuseVars",
    "encode_request",
    "event_to_span",
    "normalize_host",
)

logger = logging.getLogger(__name__)

DEFAULT_HOST = "https://cloud.langfuse.com"
INGESTION_PATH = "/api/public/otel/v1/traces"
PROJECTS_PATH = "/api/public/projects"
INGESTION_VERSION = "4"
"""``x-langfuse-ingestion-version``: what the 5.x SDK sends, so spans take Langfuse's real-time path."""
SCOPE_NAME = "sluicegate"
"""Our own instrumentation scope: we are not the SDK (``langfuse-sdk``) and do not pretend to be."""
MAX_REQUEST_BYTES = 3_500_000
"""Uncompressed protobuf bytes per request; a bigger batch is split (Langfuse caps request bodies)."""
HEALTH_TIMEOUT = 5.0
_USER_AGENT = f"sluicegate-langfuse-sink/{__version__}"
_HEX32 = re.compile(r"[0-9a-f]{32}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16  # all-zero ids are invalid (W3C trace context)
_json = msgspec.json.Encoder(enc_hook=repr)  # repr: never fail a batch on one odd value


class LangfuseVars(CallbackVars, frozen=True):
    """Callback variables of the ``langfuse`` sink (the names LiteLLM configs use)."""

    langfuse_public_key: str
    langfuse_secret_key: SecretStr
    langfuse_host: str | None = None
    """Base URL of the Langfuse deployment; ``None`` means ``LANGFUSE_HOST`` / ``LANGFUSE_BASE_URL`` / cloud."""

    aliases: ClassVar[Mapping[str, str]] = {"langfuse_secret": "langfuse_secret_key"}


class LangfuseDeliveryError(RuntimeError):
    """Langfuse did not accept a batch. ``status_code`` is ``None`` when no answer came back."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def normalize_host(host: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The base URL to use: ``host``, else ``LANGFUSE_HOST``, else ``LANGFUSE_BASE_URL``, else the cloud.

    A host without a scheme gets ``http://`` (as LiteLLM does); a trailing slash is dropped.
    """
    environ = os.environ if environ is None else environ
    value = (host or environ.get("LANGFUSE_HOST") or environ.get("LANGFUSE_BASE_URL") or DEFAULT_HOST).strip()
    if "://" not in value:
        value = f"http://{value}"
    return value.rstrip("/")


def host_problems(host: str) -> list[str]:
    """Reasons ``host`` (already normalized) cannot be a Langfuse base URL; empty when it can."""
    if any(c <= " " or c == "\x7f" for c in host):
        # urlsplit silently drops tabs and newlines: check the text itself.
        return ["must not contain spaces or control characters"]
    try:
        parts = urlsplit(host)
        port = parts.port
    except ValueError as exc:
        return [f"not a valid URL ({exc})"]
    problems = []
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append("must be an http(s) URL with a host name, e.g. https://cloud.langfuse.com")
    elif not _is_host_name(parts.hostname):
        problems.append("the host is not a valid host name: letters, digits, '-', '_' and '.' only")
    if port == 0:
        problems.append("port 0 cannot be connected to")
    if parts.username or parts.password:
        problems.append("must not carry credentials; use langfuse_public_key / langfuse_secret_key")
    if parts.query or parts.fragment:
        problems.append("must not have a query or fragment")
    return problems


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def _is_host_name(host: str) -> bool:
    """An IPv4/IPv6 address or a host name (internationalized names as their IDNA form)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        name = host.encode("idna").decode("ascii").lower().removesuffix(".")
    except UnicodeError:
        return False
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def key_problems(public_key: str, secret_key: str) -> list[str]:
    """Control characters make a key one Langfuse can never accept (the keys are never echoed)."""
    return [f"{field}: must not contain control characters (CR, LF, NUL, ...)"
            for field, key in (("langfuse_public_key", public_key), ("langfuse_secret_key", secret_key))
            if any(c < " " or c == "\x7f" for c in key)]


# --- event → OTLP span -------------------------------------------------------------------------------


def _kv(key: str, value: str | bool | list[str]) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, list):
        return KeyValue(key=key, value=AnyValue(array_value=ArrayValue(
            values=[AnyValue(string_value=v) for v in value])))
    return KeyValue(key=key, value=AnyValue(string_value=value))


MAX_PROPAGATED_CHARS = 200
"""The SDK's ``propagate_attributes`` drops a user id, session id, trace name, tag or (JSON-encoded) trace metadata
value longer than this; so does the sink, so a trace looks the same whichever wrote it."""


def _propagated(value: str | None) -> str | None:
    return value if value is not None and len(value) <= MAX_PROPAGATED_CHARS else None


def _trace_metadata(metadata: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The request's ``metadata.trace_metadata`` as ``langfuse.trace.metadata.<key>`` attributes, with the SDK's
    bound on each JSON-encoded value (``None`` values dropped, as the SDK drops them)."""
    pairs = []
    for key, value in metadata.items():
        if value is None or key in _OWN_TRACE_METADATA:  # the gateway's own keys are not the requester's to set
            continue
        encoded = _json.encode(value).decode()
        if len(encoded) <= MAX_PROPAGATED_CHARS:
            pairs.append((f"{Attr.TRACE_METADATA}.{key}", _metadata_value(value)))
    return pairs


def _as_attribute(value: Any) -> str:
    """A value as the SDK writes input/output: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else _json.encode(value).decode()


def _metadata_value(value: Any) -> str:
    # Strings go as they are and other values as JSON (the SDK 3.x/4.x convention): Langfuse parses
    # JSON where it can and keeps a plain string otherwise, whichever SDK generation it assumes.
    return value if isinstance(value, str) else _json.encode(value).decode()


def _iso_slow(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")


_last_second: tuple[int, str] = (-1, "")
_MAX_SECOND = 253402300800  # 10000-01-01: beyond it (and before 1970) the datetime path writes the year


def _iso(timestamp: float) -> str:
    """``timestamp`` in ISO 8601 UTC as :func:`_iso_slow` (``datetime.isoformat``) writes it, with ``Z``: the
    microseconds rounded half-even, no fraction when they are zero. The text of the last second is kept:
    consecutive events share it, and the datetime path was 1.7 % of the gateway's CPU with 1,000 teams logging."""
    global _last_second
    fraction, whole = math.modf(timestamp)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole += 1
        micro -= 1_000_000
    elif micro < 0:
        whole -= 1
        micro += 1_000_000
    second = int(whole)
    cached = _last_second
    if cached[0] != second:
        if not 0 <= second < _MAX_SECOND:
            return _iso_slow(timestamp)
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{micro:06d}Z" if micro else f"{cached[1]}Z"


def _ns(timestamp: float) -> int:
    return max(0, int(timestamp * 1_000_000_000))


def _ids(event: LogEvent) -> tuple[bytes, bytes, bytes | None]:
    """Trace id, span id and parent span id, all stable for one event so a redelivery upserts.

    The incoming W3C ``traceparent`` (when valid) puts the generation under the caller's trace; otherwise the
    event's ``trace_id`` is used when it is 32 hex digits (a request id), or hashed into 32 when it is not.
    """
    span_id = hashlib.sha256(f"sluicegate-span:{event.id}".encode()).digest()[:8]
    header = event.metadata.traceparent
    if header:  # most requests carry none: no regex then
        match = _TRACEPARENT.fullmatch(header.strip().lower())
        if match and match.group(1) != "ff" and match.group(2) != _ZERO_TRACE and match.group(3) != _ZERO_SPAN:
            return bytes.fromhex(match.group(2)), span_id, bytes.fromhex(match.group(3))
    raw = (event.trace_id or event.id).strip().lower().replace("-", "")
    if raw != _ZERO_TRACE and _HEX32.fullmatch(raw):
        return bytes.fromhex(raw), span_id, None
    return hashlib.sha256(f"sluicegate-trace:{event.trace_id or event.id}".encode()).digest()[:16], span_id, None


def _output(response: Any) -> Any:
    """The assistant message for a one-choice chat completion or an Anthropic message (what Langfuse shows best),
    else all of it."""
    if isinstance(response, dict):
        if response.get("type") == "message" and isinstance(response.get("content"), list):
            return {"role": response.get("role") or "assistant", "content": response["content"]}
        choices = response.get("choices")
        if isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], dict):
            choice = choices[0]
            if "message" in choice:
                return choice["message"]
            if "text" in choice:
                return choice["text"]
    return response


_IDENTITY = ("user_api_key_team_id", "user_api_key_team_alias", "user_api_key_alias", "user_api_key_hash")
_STABLE_KEYS = (
    Attr.TRACE_NAME, Attr.OBSERVATION_TYPE, Attr.OBSERVATION_MODEL, Attr.IS_APP_ROOT,
    *(f"{Attr.TRACE_METADATA}.{name}" for name in _IDENTITY),
    *(f"{Attr.OBSERVATION_METADATA}.{name}" for name in (
        *_IDENTITY, "call_type", "status", "stream", "cache_hit", "model_group", "custom_llm_provider")),
)
"""Attributes that repeat from event to event of one key (names, model, team, key, status): encoded once each."""
_OWN_TRACE_METADATA = frozenset({*_IDENTITY, "request_id"})
_TRACE_REQUEST_ID = f"{Attr.TRACE_METADATA}.request_id"
_OBSERVATION_REQUEST_ID = f"{Attr.OBSERVATION_METADATA}.request_id"
_OBSERVATION_ERROR = f"{Attr.OBSERVATION_METADATA}.error_information"
_OBSERVATION_REDACTION = f"{Attr.OBSERVATION_METADATA}.redaction"
"""Which redactors ran on the event and how many replacements each made (a redaction policy's record)."""
_JSON_BOOL = ("false", "true")
_NAMES: dict[str, str] = {}


def _span_name(call_type: str | None) -> str:
    name = _NAMES.get(call_type or "")
    if name is None:
        name = f"sluicegate-{call_type or 'completion'}"
        if len(_NAMES) < 256:
            _NAMES[call_type or ""] = name
    return name


def _span_fields(event: LogEvent) -> tuple[bytes, bytes, bytes | None, str, bool, tuple[Any, ...],
                                           list[tuple[str, Any]]]:
    """Ids, name, failure flag, the values of :data:`_STABLE_KEYS` and the other attributes (key/value pairs).

    ``None`` values are left out when encoded. Metadata strings go as they are and other values as JSON (the
    SDK 3.x/4.x convention): Langfuse parses JSON where it can and keeps a plain string otherwise, whichever SDK
    generation it assumes.
    """
    trace_id, span_id, parent_span_id = _ids(event)
    meta = event.metadata
    default_name = _span_name(event.call_type)
    # the request's metadata.trace_name / generation_name, as LiteLLM's Langfuse logger uses them
    name = meta.generation_name or default_name
    failed = event.status == "failure"
    identity = (meta.user_api_key_team_id, meta.user_api_key_team_alias, meta.user_api_key_alias,
                meta.user_api_key_hash)
    stable = (_propagated(meta.trace_name) or default_name, "generation", event.model or event.model_group or "unknown",
              # The SDK marks the first span of an application trace; ours is the only one we send for it.
              True, *identity, *identity, event.call_type, event.status, _JSON_BOOL[event.stream], _JSON_BOOL[event.cache_hit], event.model_group or None,
              event.custom_llm_provider)
    varying: list[tuple[str, Any]] = [
        (Attr.OBSERVATION_USAGE_DETAILS, _json.encode(
            {"input": event.prompt_tokens, "output": event.completion_tokens, "total": event.total_tokens}
        ).decode()),
    ]
    append = varying.append
    if parent_span_id is not None:
        # Under a caller's trace the parent span lives elsewhere: show ours as the root, as the SDK does
        # when given a trace_context.
        append((Attr.AS_ROOT, True))
    if event.messages is not None:
        append((Attr.OBSERVATION_INPUT, _as_attribute(event.messages)))
    if event.response is not None:
        append((Attr.OBSERVATION_OUTPUT, _as_attribute(_output(event.response))))
    if event.model_parameters:
        append((Attr.OBSERVATION_MODEL_PARAMETERS, _as_attribute(event.model_parameters)))
    if event.response_cost or event.cache_hit:
        # Zero usually means "no price known": leave it out so Langfuse applies its own model prices.
        append((Attr.OBSERVATION_COST_DETAILS, _as_attribute({"total": event.response_cost})))
    if event.completionStartTime:
        # JSON-quoted, as the SDK serializes a datetime (ISO text needs no escaping).
        append((Attr.OBSERVATION_COMPLETION_START_TIME, f'"{_iso(event.completionStartTime)}"'))
    if failed:
        append((Attr.OBSERVATION_LEVEL, "ERROR"))
        if event.error_str:
            append((Attr.OBSERVATION_STATUS_MESSAGE, event.error_str))
    # the request's attribution where Langfuse has a place for it, as propagate_attributes() sets it
    user_id = _propagated(meta.trace_user_id or event.end_user)
    if user_id:
        append((Attr.TRACE_USER_ID, user_id))
    session_id = _propagated(meta.session_id)
    if session_id:
        append((Attr.TRACE_SESSION_ID, session_id))
    if event.request_tags:
        tags = [t for t in event.request_tags if len(t) <= MAX_PROPAGATED_CHARS]
        if tags:
            append((Attr.TRACE_TAGS, tags))
    if meta.trace_metadata:
        varying.extend(_trace_metadata(meta.trace_metadata))
    if meta.request_id is not None:
        append((_TRACE_REQUEST_ID, meta.request_id))
        append((_OBSERVATION_REQUEST_ID, meta.request_id))
    if event.error_information is not None:
        append((_OBSERVATION_ERROR, _metadata_value(event.error_information)))
    if meta.redaction is not None:
        append((_OBSERVATION_REDACTION, _metadata_value(meta.redaction)))
    return trace_id, span_id, parent_span_id, name, failed, stable, varying


def event_to_span(event: LogEvent) -> Span:
    """One Langfuse generation for one event, with the attribute names the ``langfuse`` 5.x SDK writes."""
    trace_id, span_id, parent_span_id, name, failed, stable, varying = _span_fields(event)
    pairs = [(key, value) for key, value in zip(_STABLE_KEYS, stable) if value is not None] + varying
    attributes = [_kv(key, value) for key, value in pairs]
    start = _ns(event.startTime)
    status = Status(code=Status.STATUS_CODE_ERROR, message=event.error_str or "") if failed else Status()
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_span_id or b"",
        name=name,
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=start,
        end_time_unix_nano=max(start, _ns(event.endTime)),
        attributes=attributes,
        status=status,
    )


_RESOURCE = Resource(attributes=[_kv("service.name", "sluicegate"), _kv("service.version", __version__),
                                 _kv("telemetry.sdk.name", "sluicegate-langfuse-sink")])
_SCOPE = InstrumentationScope(name=SCOPE_NAME, version=__version__)


def encode_request(spans: Sequence[Span]) -> bytes:
    """Serialized ``ExportTraceServiceRequest`` carrying ``spans`` under the Sluicegate resource and scope."""
    request = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=_RESOURCE, scope_spans=[ScopeSpans(scope=_SCOPE, spans=spans)])])
    return request.SerializeToString()


# The same request written directly in the protobuf wire format (sluicegate.sinks.protowire): message objects
# per attribute were ~60 us per event on the gateway's loop. tests/test_wire.py checks the bytes parse equal to
# encode_request([event_to_span(...)]). Field numbers are opentelemetry-proto's (trace/v1, collector/trace/v1).
_T1_LEN, _T2_LEN, _T4_LEN, _T5_LEN = (tag(n, 2) for n in (1, 2, 4, 5))
_T3_VARINT, _T6_VARINT = tag(3, 0), tag(6, 0)
_T7_FIXED64, _T8_FIXED64, _T9_LEN, _T15_LEN = tag(7, 1), tag(8, 1), tag(9, 2), tag(15, 2)
_RESOURCE_BYTES = field_len(_T1_LEN, _RESOURCE.SerializeToString())
_STABLE_ENCODED = RepeatedKeyValues(_T9_LEN, _STABLE_KEYS)
_SCOPE_BYTES = field_len(_T1_LEN, _SCOPE.SerializeToString())


def wire_span(event: LogEvent) -> bytes:
    """:func:`event_to_span` serialized, without building message objects."""
    trace_id, span_id, parent_span_id, name, failed, stable, varying = _span_fields(event)
    start = _ns(event.startTime)
    parts = [field_len(_T1_LEN, trace_id), field_len(_T2_LEN, span_id)]
    if parent_span_id:
        parts.append(field_len(_T4_LEN, parent_span_id))
    parts += [field_len(_T5_LEN, name.encode()), _T6_VARINT + b"\x01",  # SPAN_KIND_INTERNAL
              field_fixed64(_T7_FIXED64, start), field_fixed64(_T8_FIXED64, max(start, _ns(event.endTime)))]
    parts.append(_STABLE_ENCODED.encode(stable))
    parts.append(key_values(_T9_LEN, varying))
    status = b""
    if failed:
        message = (event.error_str or "").encode()
        status = (field_len(_T2_LEN, message) if message else b"") + _T3_VARINT + b"\x02"  # STATUS_CODE_ERROR
    parts.append(field_len(_T15_LEN, status))
    return b"".join(parts)


def wire_request(spans: Sequence[bytes]) -> bytes:
    """``ExportTraceServiceRequest`` bytes carrying already-serialized spans under our resource and scope."""
    scope_spans = _SCOPE_BYTES + b"".join(field_len(_T2_LEN, span) for span in spans)
    return field_len(_T1_LEN, _RESOURCE_BYTES + field_len(_T2_LEN, scope_spans))


_YIELD_EVERY = 20
"""Events encoded between two yields to the event loop (about 1 ms of CPU), so a big batch never stalls it."""


GZIP_MIN_BYTES = 64 * 1024
"""Request bodies smaller than this go uncompressed (Langfuse takes both; OTLP exporters send uncompressed unless
told otherwise): starting a gzip stream costs 30-90 us of CPU whatever the size (zlib sets up ~256 KiB of state)
and level 1 ~5 us per KiB, on the event loop that serves requests. At 16 KiB, gzip was 3.5 % of the gateway's CPU
with 1,000 teams logging (bench.profile, gw-sinks: their batches are 10-20 KiB); at 64 KiB it is left to the big
batches of busy instances, where the bytes saved are worth it."""


async def _bodies(batch: Sequence[LogEvent]) -> list[tuple[bytes, bool]]:
    """Request bodies for ``batch``, each with whether it is gzipped, split so none exceeds
    :data:`MAX_REQUEST_BYTES` raw."""
    groups: list[list[bytes]] = [[]]
    size = 0
    for index, event in enumerate(batch):
        if index and index % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
        span = wire_span(event)
        if groups[-1] and size + len(span) > MAX_REQUEST_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(span)
        size += len(span)
    bodies = []
    for group in groups:
        raw = wire_request(group)
        # Level 1: most of the size win for a fraction of the CPU (level 5 was 6 % of the loop in bench/).
        gzipped = len(raw) >= GZIP_MIN_BYTES
        bodies.append((gzip.compress(raw, compresslevel=1) if gzipped else raw, gzipped))
    return bodies


def _transport_error(exc: BaseException) -> tuple[str, str]:
    """``(error_kind, name)`` of a transport failure.

    httpx-aiohttp maps a refused connection to ``ConnectTimeout`` (its exception map prefers the broader
    aiohttp class), so the aiohttp cause decides where there is one.
    """
    import aiohttp
    import httpx

    cause = exc.__cause__
    if isinstance(exc, aiohttp.ClientConnectorError) or isinstance(cause, aiohttp.ClientConnectorError) \
            or isinstance(exc, httpx.ConnectError):
        return "unreachable", "ConnectError"
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return "timeout", type(exc).__name__
    return "unreachable", type(exc).__name__


_INGEST_HEADERS = {
    "Content-Type": "application/x-protobuf",
    "x-langfuse-ingestion-version": INGESTION_VERSION,
}
_GZIP_HEADER = encode_headers({"Content-Encoding": "gzip"})


class _Shared:
    """What every instance on one event loop shares: the delivery and health-check clients and the gate."""

    __slots__ = ("checked", "client", "http", "in_flight", "limits", "timeout")

    def __init__(self, limits: httpx.Limits, timeout: httpx.Timeout) -> None:
        from httpx_aiohttp import HttpxAiohttpClient

        self.limits = limits
        self.checked: dict[DestinationPolicy, httpx.AsyncClient] = {}  # one per policy: at most the API one
        # httpx's API on aiohttp's connection pool (for the SDK's typed health-check client): httpcore's pool
        # scans every queued request for every connection, which turns quadratic with thousands of projects.
        self.client = HttpxAiohttpClient(limits=limits, timeout=timeout, follow_redirects=False,
                                         headers={"User-Agent": _USER_AGENT})
        # Deliveries go through the core's lean HTTP/1.1 client: a quarter of aiohttp's CPU per POST (bench/).
        connections = limits.max_connections or 64
        self.http = HttpClient(user_agent=_USER_AGENT, max_per_origin=connections, max_connections=512,
                               keepalive_expiry=limits.keepalive_expiry or 30.0)
        self.timeout = timeout.read or 20.0
        self.in_flight = asyncio.Semaphore(connections)

    @property
    def is_closed(self) -> bool:
        return self.client.is_closed or self.http.closed

    def health_client(self, policy: DestinationPolicy) -> httpx.AsyncClient:
        """The health-check client for ``policy``: unchecked for config.yaml's callbacks, else one whose
        connections resolve through the policy (each resolved address checked before connecting)."""
        if policy.trusted:
            return self.client
        client = self.checked.get(policy)
        if client is None:
            from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient

            transport = AiohttpTransport(limits=self.limits, client=aiohttp_connector_factory(
                policy, keepalive_timeout=self.limits.keepalive_expiry or 30.0))
            client = self.checked[policy] = HttpxAiohttpClient(
                transport=transport, timeout=self.client.timeout, follow_redirects=False, trust_env=False,
                headers={"User-Agent": _USER_AGENT})  # trust_env=False: no proxy from the environment
        return client

    async def aclose(self) -> None:
        await self.client.aclose()
        for client in self.checked.values():
            await client.aclose()
        await self.http.aclose()


# --- the sink ----------------------------------------------------------------------------------------


class LangfuseSink(Sink):
    """Deliver events to one Langfuse project over OTLP/HTTP (protobuf, gzip from 64 KiB, Basic auth)."""

    callback_name = "langfuse"
    Vars = LangfuseVars
    max_batch_size = 100
    send_timeout = 30.0
    callback_vars: LangfuseVars

    # Bounded by connections, not by projects: a waiting send queues for a pooled connection. (httpx and aiohttp,
    # ~0.1 s to import, are imported once a sink needs its clients: not by every process that loads the plugin.)
    _limits: ClassVar[dict[str, Any]] = {"max_connections": 64, "max_keepalive_connections": 64,
                                         "keepalive_expiry": 30.0}
    _timeout: ClassVar[dict[str, Any]] = {"timeout": 20.0, "connect": 5.0, "pool": None}
    # One client per running event loop (httpx clients are loop-bound), shared by every instance.
    _shared: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shared]] = weakref.WeakKeyDictionary()

    __slots__ = ("_base_url", "_headers", "_closed")

    def __init__(self, callback_vars: LangfuseVars) -> None:
        super().__init__(callback_vars)
        # The host default is read once, here: a changed environment reaches new instances only.
        self._base_url = normalize_host(callback_vars.langfuse_host)
        token = base64.b64encode(
            f"{callback_vars.langfuse_public_key}:{callback_vars.langfuse_secret_key.get_secret_value()}".encode()
        ).decode("ascii")
        # The request head's header lines, credentials included: encoded once, kept in this one form only.
        self._headers = encode_headers({**_INGEST_HEADERS, "Authorization": f"Basic {token}"})
        self._closed = False

    def __repr__(self) -> str:
        return f"LangfuseSink(host={self._base_url!r}, public_key={self.callback_vars.langfuse_public_key!r})"

    @classmethod
    def destinations(cls, callback_vars: CallbackVars) -> list[tuple[str, str]]:
        assert isinstance(callback_vars, LangfuseVars)
        return [("langfuse_host", normalize_host(callback_vars.langfuse_host))]

    @property
    def base_url(self) -> str:
        return self._base_url

    def secret_forms(self) -> Iterable[str]:
        """The secret key, and the ``Basic`` token (base64 of ``public_key:secret_key``) every request carries."""
        secret = self.callback_vars.langfuse_secret_key.get_secret_value()
        token = base64.b64encode(f"{self.callback_vars.langfuse_public_key}:{secret}".encode()).decode("ascii")
        return (secret, token)

    @classmethod
    def env_defaults(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if environ.get("LANGFUSE_PUBLIC_KEY"):
            found["langfuse_public_key"] = environ["LANGFUSE_PUBLIC_KEY"]
        if environ.get("LANGFUSE_SECRET_KEY"):
            found["langfuse_secret_key"] = environ["LANGFUSE_SECRET_KEY"]
        host = environ.get("LANGFUSE_HOST") or environ.get("LANGFUSE_BASE_URL")
        if host:
            found["langfuse_host"] = host
        return found

    @classmethod
    def _state(cls) -> _Shared:
        loop = asyncio.get_running_loop()
        shared = cls._shared.get(loop)
        if shared is None or shared.is_closed:
            import httpx

            shared = cls._shared[loop] = _Shared(httpx.Limits(**cls._limits), httpx.Timeout(**cls._timeout))
        return shared

    @classmethod
    async def shutdown(cls) -> None:
        """Close the shared client of the running loop (others are dropped: their loop owns their sockets)."""
        states, cls._shared = cls._shared, weakref.WeakKeyDictionary()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        shared = states.get(loop)
        if shared is not None:
            await shared.aclose()

    async def send(self, batch: Sequence[LogEvent]) -> None:
        if not batch:
            return
        if self._closed:
            raise LangfuseDeliveryError("langfuse: sink is closed")
        shared = self._state()
        url = self._base_url + INGESTION_PATH
        # Encode only once a slot is free: however many projects send at once, at most `in_flight` bodies
        # exist, so memory follows the connection limit, not the number of projects.
        async with shared.in_flight:
            for body, gzipped in await _bodies(batch):
                try:
                    response = await shared.http.post(
                        url, body, headers=self._headers + _GZIP_HEADER if gzipped else self._headers,
                        timeout=shared.timeout, policy=self.destination_policy)
                except HttpClientError as exc:
                    name = {"connect": "ConnectError", "timeout": "Timeout"}.get(exc.kind, exc.kind)
                    raise LangfuseDeliveryError(
                        f"langfuse: {name} sending to {self._base_url}: {exc}") from None
                status = response.status
                if not 200 <= status < 300:
                    # A short, scrubbed excerpt: a proxy or debugging endpoint may answer with our request.
                    text = Scrubber.for_sink(self).excerpt(response.body)
                    raise LangfuseDeliveryError(f"langfuse: {self._base_url} answered HTTP {status}: {text}",
                                                status_code=status)
                self._note_partial_success(response.headers.get("content-type", ""), response.body)

    def _note_partial_success(self, content_type: str, content: bytes) -> None:
        # Rejected spans would be rejected again on every retry, so they are logged, not raised.
        if "protobuf" not in content_type or not content:
            return
        try:
            answer = ExportTraceServiceResponse.FromString(content)
        except Exception:  # an unparsable 2xx body is still a 2xx
            return
        if answer.partial_success.rejected_spans:
            logger.warning("langfuse: %s rejected %d span(s): %s", self._base_url,
                           answer.partial_success.rejected_spans,
                           Scrubber.for_sink(self).excerpt(answer.partial_success.error_message))

    async def health_check(self) -> HealthResult:
        """Authenticate against the project with ``GET /api/public/projects`` (the SDK's typed API client)."""
        import httpx
        from langfuse.api.client import AsyncLangfuseAPI
        from langfuse.api.core.api_error import ApiError

        where = f"langfuse at {self._base_url}"
        api = AsyncLangfuseAPI(
            base_url=self._base_url,
            username=self.callback_vars.langfuse_public_key,
            password=self.callback_vars.langfuse_secret_key.get_secret_value(),
            httpx_client=self._state().health_client(self.destination_policy),
        )
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                projects = await api.projects.get(
                    request_options={"max_retries": 0, "timeout_in_seconds": int(HEALTH_TIMEOUT)})
        except ApiError as exc:
            status = exc.status_code or 0
            if status in (401, 403):
                return HealthResult(healthy=False, error_kind="auth",
                                    details=f"{where}: credentials rejected (HTTP {status})")
            kind = "server_error" if status >= 500 else "http_error"
            return HealthResult(healthy=False, error_kind=kind, details=f"{where}: HTTP {status}")
        except (TimeoutError, httpx.HTTPError) as exc:
            kind, name = _transport_error(exc)
            reason = f"no answer within {HEALTH_TIMEOUT:g}s" if kind == "timeout" else f"cannot connect ({name})"
            return HealthResult(healthy=False, error_kind=kind, details=f"{where}: {reason}")
        except Exception as exc:  # an unexpected body (not Langfuse?) is a finding, not a crash
            return HealthResult(healthy=False, error_kind="protocol",
                                details=f"{where}: unexpected answer ({type(exc).__name__})")
        names = ", ".join(p.name for p in projects.data) or "no project"
        return HealthResult(healthy=True, details=f"{where}: authenticated for project {names}")

    async def aclose(self) -> None:
        # Nothing per instance to release: the connection pool is shared and closed by shutdown().
        self._closed = True
