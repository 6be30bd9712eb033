"""The ``otel`` sink: one OTLP span per event, following the OpenTelemetry GenAI semantic conventions.

Why no ``TracerProvider``: the SDK's pipeline is one provider, one ``BatchSpanProcessor`` thread and one
exporter per destination, which is how LiteLLM leaked a thread per team. Here an instance holds only its
parsed settings. ``send`` writes the spans in the OTLP protobuf wire format itself (checked against the SDK's
own encoder in the tests) on the running event loop, and posts them there: the core's lean HTTP/1.1 client
(``sluicegate.net.http``) for ``http/protobuf`` and ``http/json``, ``grpc.aio`` for ``grpc``. Both transports
are shared by every instance on the loop, so no thread exists per destination, and a slow endpoint only holds
the connection of the instance that is waiting on it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import hashlib
import ipaddress
import logging
import re
import socket
import time
import urllib.parse
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import msgspec
from opentelemetry.exporter.otlp.proto.common._internal import _encode_instrumentation_scope, _encode_resource
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags as PbSpanFlags
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from sluicegate.events import REDACTED
from sluicegate.sinks.base import CallbackVars, HealthResult, SecretStr, Sink
from sluicegate.net.http import HttpClient, HttpClientError, encode_headers
from sluicegate.sinks.destinations import DestinationPolicy
from sluicegate.sinks.protowire import (
    RepeatedKeyValues,
    field_fixed32,
    field_fixed64,
    field_len,
    key_values,
    tag,
)
from sluicegate.sinks.scrub import Scrubber

from sluicegate_otel_sink import __version__

if TYPE_CHECKING:
    import grpc

    from sluicegate.events import LogEvent

__all__ = ("OtelExportError", "OtelSink", "OtelVars", "header_problems", "host_problem", "parse_key_values",
           "problems")

logger = logging.getLogger(__name__)

Protocol = Literal["http/protobuf", "http/json", "grpc"]
PROTOCOLS: tuple[str, ...] = ("http/protobuf", "http/json", "grpc")
ENCODE_CHUNK = 40
"""Events encoded between two yields to the event loop (~1 ms of CPU)."""

_SCOPE = InstrumentationScope("sluicegate", __version__,
                              "https://opentelemetry.io/schemas/1.37.0")
_PB_SCOPE = _encode_instrumentation_scope(_SCOPE)
_PB_SCOPE_BYTES = _PB_SCOPE.SerializeToString()
_GRPC_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_USER_AGENT = f"sluicegate-otel-sink/{__version__}"
_HEALTH_TIMEOUT = 5.0
_MAX_ATTRIBUTE_CHARS = 64_000
"""Longer message attributes are cut: most backends drop a span whose attribute exceeds their limit."""
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_OPERATIONS = {
    "completion": "chat", "acompletion": "chat", "chat": "chat", "chat_completion": "chat",
    "text_completion": "text_completion", "atext_completion": "text_completion",
    "embedding": "embeddings", "aembedding": "embeddings", "embeddings": "embeddings",
    "anthropic_messages": "chat",
}
_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_call",
                   "refusal": "content_filter", "pause_turn": "stop"}
"""Anthropic ``stop_reason`` → the GenAI output message ``finish_reason``."""
_PARAMETERS = {
    "temperature": "gen_ai.request.temperature", "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k", "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens", "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty", "n": "gen_ai.request.choice.count",
}


class OtelVars(CallbackVars, frozen=True):
    otel_endpoint: str
    """HTTP: the traces URL (``/v1/traces`` is added to a bare origin). gRPC: ``host:port`` or a URL."""
    otel_protocol: Protocol = "http/protobuf"
    otel_headers: SecretStr | None = None
    """``k=v,k2=v2`` (values percent-decoded, as in ``OTEL_EXPORTER_OTLP_HEADERS``) or a JSON object."""
    otel_service_name: str = "sluicegate"
    otel_resource_attributes: dict[str, str | int | float | bool] | str | None = None
    """A mapping, or ``k=v,k2=v2`` as in ``OTEL_RESOURCE_ATTRIBUTES``."""


class OtelExportError(RuntimeError):
    """The endpoint refused or could not take a batch; the message names the sink, never a header."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# --- configuration parsing -------------------------------------------------------------------------------


def parse_key_values(text: str, *, what: str) -> dict[str, str]:
    """Parse ``k=v,k2=v2`` (percent-decoded, the OTel env format) or a JSON object of strings."""
    stripped = text.strip()
    if not stripped:
        return {}
    if stripped.startswith("{"):
        try:
            data = msgspec.json.decode(stripped, type=dict[str, str])
        except msgspec.DecodeError as exc:
            raise ValueError(f"{what} looks like JSON but is not an object of strings ({exc})") from None
        return data
    result: dict[str, str] = {}
    for number, item in enumerate(stripped.split(","), start=1):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = urllib.parse.unquote(key).strip()
        if not sep or not key:
            # Never echo the item: for headers it is (part of) a credential.
            raise ValueError(f"{what} item {number} is not of the form key=value")
        result[key] = urllib.parse.unquote(value).strip()
    return result


_HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_GRPC_KEY = re.compile(r"[0-9a-z_.-]+")
"""gRPC metadata keys (after lower-casing): what gRPC core accepts; ``-bin`` keys take bytes, which we never send."""
_CLIENT_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
"""Written by the HTTP client itself (``encode_headers`` refuses them)."""
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def host_problem(host: str) -> str | None:
    """Why ``host`` (a name or an IP address, without port) can never be connected to, else ``None``."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if ":" in host:
        return "the host is not a valid IPv6 address"
    try:
        name = host.encode("idna").decode("ascii").lower().removesuffix(".")
    except UnicodeError:
        name = ""
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return "the host is not a valid host name: letters, digits, '-', '_' and '.' only"
    return None


def _url_problem(parsed: urllib.parse.SplitResult, schemes: tuple[str, ...]) -> str | None:
    """Why an ``http(s)``-style endpoint URL can never be delivered to, else ``None``."""
    if parsed.scheme not in schemes or not parsed.hostname:
        return "no scheme or host"
    if parsed.username is not None or parsed.password is not None:
        return "must not carry credentials (user:password@); send them in otel_headers"
    if parsed.fragment:
        return "must not have a #fragment"
    try:
        port = parsed.port
    except ValueError:
        return "the port is not a number from 1 to 65535"
    if port == 0:
        return "the port is not a number from 1 to 65535"
    return host_problem(parsed.hostname)


def _grpc_target(endpoint: str) -> tuple[str, bool]:
    """``(host:port, tls)`` from ``host:port`` (plaintext), ``http://host:port`` or ``https://host:port``."""
    usage = "for grpc give host:port, http://host:port or https://host:port"
    endpoint = _no_controls(endpoint.strip())
    if "://" in endpoint:
        parsed = _split(endpoint, usage)
        problem = _url_problem(parsed, ("http", "https", "grpc", "grpcs"))
        if problem:
            raise ValueError(f"{usage} ({problem})")
        port = parsed.port or (443 if parsed.scheme in ("https", "grpcs") else 4317)
        host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
        return f"{host}:{port}", parsed.scheme in ("https", "grpcs")
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(usage)
    problem = host_problem(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    if problem:
        raise ValueError(f"{usage} ({problem})")
    return endpoint, False


def _http_url(endpoint: str) -> str:
    usage = "for http/protobuf and http/json give an http:// or https:// traces URL"
    endpoint = _no_controls(endpoint.strip())
    parsed = _split(endpoint, usage)
    problem = _url_problem(parsed, ("http", "https"))
    if problem:
        raise ValueError(f"{usage} ({problem})")
    if parsed.path in ("", "/"):
        # A bare collector origin: the OTLP/HTTP traces path, as OTEL_EXPORTER_OTLP_ENDPOINT would get.
        return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, "/v1/traces", parsed.query, ""))
    return endpoint


def _split(endpoint: str, usage: str) -> urllib.parse.SplitResult:
    try:
        return urllib.parse.urlsplit(endpoint)
    except ValueError:  # e.g. a bracketed host that is no IPv6 address
        raise ValueError(f"{usage} (the URL cannot be parsed)") from None


def _no_controls(endpoint: str) -> str:
    # urlsplit silently drops tabs and newlines, so check the text itself (never echoed: it may hold a token).
    if any(c <= " " or c == "\x7f" for c in endpoint):
        raise ValueError("the endpoint must not contain spaces or control characters")
    return endpoint


def header_problems(headers: Mapping[str, str], *, grpc_metadata: bool) -> list[str]:
    """Why headers (or gRPC metadata) could never be sent; neither names nor values are echoed."""
    found = []
    for number, (name, value) in enumerate(headers.items(), start=1):
        if grpc_metadata:
            key = name.lower()
            if not _GRPC_KEY.fullmatch(key) or key.endswith("-bin") or key.startswith("grpc-"):
                found.append(f"header {number}: the name is not a valid gRPC metadata key (letters, digits, "
                             "'-', '_' and '.'; no grpc- prefix or -bin suffix)")
            if any(not " " <= c <= "~" for c in value):
                found.append(f"header {number}: gRPC metadata values must be printable ASCII (no CR, LF, NUL "
                             "or other control characters)")
            continue
        if not _HTTP_TOKEN.fullmatch(name):
            found.append(f"header {number}: the name is not a valid HTTP token")
        elif name.lower() in _CLIENT_HEADERS:
            found.append(f"header {number}: Host, Content-Length and Transfer-Encoding are set by the client")
        if any((c < " " and c != "\t") or c == "\x7f" for c in value):
            found.append(f"header {number}: the value contains CR, LF, NUL or another control character")
        elif any(c > "\xff" for c in value):
            found.append(f"header {number}: the value has characters outside ISO-8859-1 (percent-encode it)")
    return found


def _display(endpoint: str) -> str:
    """The endpoint without user info or query string: either may carry a credential."""
    if "://" not in endpoint:
        return endpoint
    parsed = urllib.parse.urlsplit(endpoint)
    host = parsed.hostname or ""
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "", ""))


def problems(callback_vars: Mapping[str, Any]) -> list[str]:
    """Configuration-time problems, as ``"field: reason"`` (used by ``validate_callback_vars``)."""
    found: list[str] = []
    protocol = callback_vars.get("otel_protocol", "http/protobuf")
    endpoint = callback_vars.get("otel_endpoint")
    if isinstance(endpoint, str):
        try:
            _grpc_target(endpoint) if protocol == "grpc" else _http_url(endpoint)
        except ValueError as exc:
            found.append(f"otel_endpoint: {exc}")
    headers = callback_vars.get("otel_headers")
    if isinstance(headers, SecretStr):
        headers = headers.get_secret_value()
    parsed: Mapping[Any, Any] | None = headers if isinstance(headers, Mapping) else None
    if isinstance(headers, str):
        try:
            parsed = parse_key_values(headers, what="otel_headers")
        except ValueError as exc:
            found.append(f"otel_headers: {exc}")
    if parsed is not None and all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
        found += [f"otel_headers: {reason}" for reason in header_problems(parsed, grpc_metadata=protocol == "grpc")]
    attributes = callback_vars.get("otel_resource_attributes")
    if isinstance(attributes, str):
        try:
            parse_key_values(attributes, what="otel_resource_attributes")
        except ValueError as exc:
            found.append(f"otel_resource_attributes: {exc}")
    return found


# --- events to spans -------------------------------------------------------------------------------------


def _is_redacted(value: Any) -> bool:
    """True when the redaction step touched ``value`` (whole or any string inside it)."""
    kind = type(value)
    if kind is str:
        return value == REDACTED
    if kind is dict:
        children: Any = value.values()
    elif kind is list or kind is tuple:
        children = value
    elif isinstance(value, Mapping):  # exact types first: the ABC checks cost more than the walk
        children = value.values()
    elif isinstance(value, (list, tuple)):
        children = value
    elif isinstance(value, str):
        return value == REDACTED
    else:
        return False
    for child in children:
        if _is_redacted(child):
            return True
    return False


def _is_mapping(value: Any) -> bool:
    """``isinstance(value, Mapping)`` with the common case (a dict) first: the ABC check costs ~0.4 us."""
    return type(value) is dict or isinstance(value, Mapping)


def _parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    if isinstance(content, list):
        parts = []
        for item in content:
            kind = item.get("type") if _is_mapping(item) else None
            if kind == "text":
                parts.append({"type": "text", "content": item.get("text", "")})
            elif kind == "tool_use":  # Anthropic's blocks (/v1/messages) in the GenAI part types
                parts.append({"type": "tool_call", "id": item.get("id"), "name": item.get("name"),
                              "arguments": item.get("input")})
            elif kind == "tool_result":
                parts.append({"type": "tool_call_response", "id": item.get("tool_use_id"),
                              "response": item.get("content")})
            elif kind == "thinking":
                parts.append({"type": "reasoning", "content": item.get("thinking", "")})
            elif _is_mapping(item):
                parts.append(dict(item))
            else:
                parts.append({"type": "text", "content": str(item)})
        return parts
    return [{"type": "text", "content": str(content)}]


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    parts = []
    for call in calls or ():
        if _is_mapping(call):
            function = call.get("function") or {}
            parts.append({"type": "tool_call", "id": call.get("id"), "name": function.get("name"),
                          "arguments": function.get("arguments")})
    return parts


def _input_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages in the GenAI ``gen_ai.input.messages`` shape (role + typed parts)."""
    if not isinstance(messages, list):
        return [{"role": "user", "parts": _parts(messages)}]
    converted = []
    for message in messages:
        if not _is_mapping(message):
            converted.append({"role": "user", "parts": _parts(message)})
            continue
        role = message.get("role", "user")
        if role == "tool":
            parts = [{"type": "tool_call_response", "id": message.get("tool_call_id"),
                      "response": message.get("content")}]
        else:
            parts = _parts(message.get("content")) + _tool_calls(message.get("tool_calls"))
        converted.append({"role": role, "parts": parts})
    return converted


def _output_messages(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    if response.get("type") == "message":  # an Anthropic message (/v1/messages)
        reason = response.get("stop_reason") or ""
        return [{"role": "assistant", "parts": _parts(response.get("content")),
                 "finish_reason": _FINISH_REASONS.get(reason, reason)}]
    converted = []
    for choice in response.get("choices") or ():
        if not _is_mapping(choice):
            continue
        message = choice.get("message") or choice.get("delta") or {}
        parts = _parts(message.get("content") if "message" in choice or "delta" in choice
                       else choice.get("text")) + _tool_calls(message.get("tool_calls"))
        converted.append({"role": message.get("role", "assistant"), "parts": parts,
                          "finish_reason": choice.get("finish_reason") or ""})
    return converted


def _json_attribute(value: Any) -> str:
    text = msgspec.json.encode(value, enc_hook=str).decode()
    return text if len(text) <= _MAX_ATTRIBUTE_CHARS else text[:_MAX_ATTRIBUTE_CHARS]


def _nanos(seconds: float | None) -> int:
    return int((seconds or time.time()) * 1e9)


def _hash_id(text: str, size: int) -> int:
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:size], "big")
    return value or 1  # all-zero ids are invalid in W3C trace context and OTLP


def _contexts(event: LogEvent) -> tuple[SpanContext, SpanContext | None]:
    """This span's context and its remote parent (from ``traceparent``), with stable ids.

    The span id is derived from ``event.id`` so a retried batch re-sends the same span, which backends
    treat as one. Without a valid ``traceparent`` the trace id is the event's ``trace_id`` when that is
    already 32 hex digits (the gateway's request id), otherwise a hash of it.
    """
    span_id = _hash_id(f"span:{event.id}", 8)
    header = (event.metadata.traceparent or "").strip().lower()
    match = _TRACEPARENT.match(header)
    if match and match.group(1) != "ff" and not (match.group(1) == "00" and match.group(5)):
        trace_id, parent_id = int(match.group(2), 16), int(match.group(3), 16)
        if trace_id and parent_id:
            flags = TraceFlags(int(match.group(4), 16) & 0xFF)
            parent = SpanContext(trace_id, parent_id, is_remote=True, trace_flags=flags)
            return SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags), parent
    source = event.trace_id or event.metadata.request_id or event.id
    as_hex = int(source, 16) if _HEX32.match(source) else 0
    trace_id = as_hex or _hash_id(f"trace:{source}", 16)
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)), None


def _wire_ids(event: LogEvent) -> tuple[bytes, bytes, bytes | None]:
    """:func:`_contexts` as the wire wants it (trace id, span id, remote parent span id as bytes), without
    building ``SpanContext`` objects: the same ids, at a third of the cost."""
    span_id = hashlib.sha256(f"span:{event.id}".encode()).digest()[:8]
    if span_id == _ZERO_SPAN:
        span_id = _ONE_SPAN
    header = event.metadata.traceparent
    if header:
        match = _TRACEPARENT.match(header.strip().lower())
        if match and match.group(1) != "ff" and not (match.group(1) == "00" and match.group(5)):
            trace_hex, parent_hex = match.group(2), match.group(3)
            if int(trace_hex, 16) and int(parent_hex, 16):
                return bytes.fromhex(trace_hex), span_id, bytes.fromhex(parent_hex)
    source = event.trace_id or event.metadata.request_id or event.id
    if _HEX32.match(source) and int(source, 16):
        return bytes.fromhex(source), span_id, None
    return _hash_id(f"trace:{source}", 16).to_bytes(16, "big"), span_id, None


_ZERO_SPAN, _ONE_SPAN = bytes(8), (1).to_bytes(8, "big")


@functools.lru_cache(maxsize=1024)
def _server(api_base: str) -> tuple[str | None, int]:
    """``server.address`` and ``server.port`` of an upstream base URL (few distinct ones: parsed once each)."""
    parsed = urllib.parse.urlsplit(api_base)
    return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)


_STABLE_KEYS = ("gen_ai.operation.name", "gen_ai.system", "gen_ai.provider.name", "gen_ai.request.model",
                "gen_ai.response.model", "sluicegate.team_id", "sluicegate.team_alias", "sluicegate.key_alias",
                "sluicegate.status", "sluicegate.stream", "sluicegate.cache_hit", "gen_ai.request.stream")
"""Attributes that repeat from event to event of one key (team, model, provider, status): encoded once each."""


def _stable(event: LogEvent, operation: str, response: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """The values of :data:`_STABLE_KEYS` for ``event``, in order."""
    metadata = event.metadata
    provider = event.custom_llm_provider or "_OTHER"
    return (operation, provider, provider, event.model_group or event.model,
            (response.get("model") if response is not None else None) or event.model,
            metadata.user_api_key_team_id, metadata.user_api_key_team_alias, metadata.user_api_key_alias,
            event.status, event.stream, event.cache_hit, event.stream)


def _attributes(event: LogEvent, operation: str) -> dict[str, Any]:
    """The span's attributes; ``None`` values are left in (the encoders skip them)."""
    response = event.response if isinstance(event.response, Mapping) else None
    attributes = dict(zip(_STABLE_KEYS, _stable(event, operation, response)))
    attributes.update(_varying(event, response))
    return attributes


def _varying(event: LogEvent, response: Mapping[str, Any] | None) -> dict[str, Any]:
    """The attributes not in :data:`_STABLE_KEYS`."""
    metadata = event.metadata
    attributes: dict[str, Any] = {
        "gen_ai.usage.input_tokens": event.prompt_tokens,
        "gen_ai.usage.output_tokens": event.completion_tokens,
        "sluicegate.request_id": metadata.request_id or event.trace_id,
        "sluicegate.event_id": event.id,
        "sluicegate.response_cost": event.response_cost,
        "sluicegate.total_tokens": event.total_tokens,
    }
    if response is not None:
        if isinstance(response.get("id"), str):
            attributes["gen_ai.response.id"] = response["id"]
        reasons = [c.get("finish_reason") for c in response.get("choices") or () if _is_mapping(c)]
        if not reasons and isinstance(response.get("stop_reason"), str):
            reasons = [response["stop_reason"]]
        if any(reasons):
            attributes["gen_ai.response.finish_reasons"] = [r or "" for r in reasons]
    # the request's attribution (sluicegate.attribution): session, end user, tags
    if metadata.session_id:
        attributes["gen_ai.conversation.id"] = metadata.session_id
        attributes["sluicegate.session_id"] = metadata.session_id
    if event.end_user:
        attributes["sluicegate.end_user"] = event.end_user
    if event.request_tags:
        attributes["sluicegate.request_tags"] = list(event.request_tags)
    if event.completionStartTime and event.startTime:
        first_token = event.completionStartTime - event.startTime
        attributes["gen_ai.server.time_to_first_token"] = max(first_token, 0.0)
    for name, value in event.model_parameters.items():
        key = _PARAMETERS.get(name)
        if key and isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes[key] = value
    stop = event.model_parameters.get("stop")
    if isinstance(stop, str):
        attributes["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        attributes["gen_ai.request.stop_sequences"] = stop
    if event.api_base and "://" in event.api_base:
        attributes["server.address"], attributes["server.port"] = _server(event.api_base)
    if event.status == "failure":
        info = event.error_information or {}
        attributes["error.type"] = str(info.get("error_class") or "_OTHER")
        if isinstance(info.get("status_code"), int):
            attributes["http.response.status_code"] = info["status_code"]
    if event.messages is not None and not _is_redacted(event.messages):
        attributes["gen_ai.input.messages"] = _json_attribute(_input_messages(event.messages))
    # Redaction only ever touches the choices of a response (sluicegate.sinks.redaction).
    if response is not None and response.get("choices") and not _is_redacted(response["choices"]):
        attributes["gen_ai.output.messages"] = _json_attribute(_output_messages(response))
    elif response is not None and response.get("type") == "message" and not _is_redacted(response.get("content")):
        attributes["gen_ai.output.messages"] = _json_attribute(_output_messages(response))
    return attributes


def event_to_span(event: LogEvent, resource: Resource) -> ReadableSpan:
    """One GenAI client span for one gateway event."""
    operation = _OPERATIONS.get(event.call_type, event.call_type or "chat")
    model = event.model_group or event.model
    context, parent = _contexts(event)
    if event.status == "failure":
        status = Status(StatusCode.ERROR, (event.error_str or "request failed")[:1024])
    else:
        status = Status(StatusCode.UNSET)
    start = _nanos(event.startTime)
    return ReadableSpan(
        name=f"{operation} {model}".strip(), context=context, parent=parent, resource=resource,
        attributes={k: v for k, v in _attributes(event, operation).items() if v is not None},
        kind=SpanKind.CLIENT, status=status,
        start_time=start, end_time=max(_nanos(event.endTime), start), instrumentation_scope=_SCOPE)


_FLAGS_LOCAL = PbSpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_FLAGS_REMOTE_PARENT = _FLAGS_LOCAL | PbSpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


# --- OTLP protobuf wire format, written directly (sluicegate.sinks.protowire) ------------------------------
# Building upb message objects cost ~50 us per span; tests/test_encoding.py checks that the bytes parse equal to
# what the SDK's encoder produces. Field numbers are opentelemetry-proto's (trace/v1).
_T1_LEN, _T2_LEN, _T3_LEN, _T4_LEN, _T5_LEN = (tag(n, 2) for n in (1, 2, 3, 4, 5))
_T3_VARINT, _T6_VARINT = tag(3, 0), tag(6, 0)
_T7_FIXED64, _T8_FIXED64 = tag(7, 1), tag(8, 1)
_T9_LEN, _T15_LEN, _T16_FIXED32 = tag(9, 2), tag(15, 2), tag(16, 5)
_STABLE_ENCODED = RepeatedKeyValues(_T9_LEN, _STABLE_KEYS)


def wire_span(event: LogEvent) -> bytes:
    """One ``Span`` message, serialized: the span :func:`event_to_span` describes, without the SDK's objects."""
    operation = _OPERATIONS.get(event.call_type, event.call_type or "chat")
    model = event.model_group or event.model
    trace_id, span_id, parent_id = _wire_ids(event)
    start = _nanos(event.startTime)
    parts = [field_len(_T1_LEN, trace_id), field_len(_T2_LEN, span_id)]
    if parent_id is not None:
        parts.append(field_len(_T4_LEN, parent_id))
    parts.append(field_len(_T5_LEN, f"{operation} {model}".strip().encode()))
    parts.append(_T6_VARINT + b"\x03")  # SPAN_KIND_CLIENT
    parts.append(field_fixed64(_T7_FIXED64, start))
    parts.append(field_fixed64(_T8_FIXED64, max(_nanos(event.endTime), start)))
    response = event.response if _is_mapping(event.response) else None
    parts.append(_STABLE_ENCODED.encode(_stable(event, operation, response)))
    parts.append(key_values(_T9_LEN, _varying(event, response).items()))
    if event.status == "failure":
        message = (event.error_str or "request failed")[:1024].encode()
        status = (field_len(_T2_LEN, message) if message else b"") + _T3_VARINT + b"\x02"  # STATUS_CODE_ERROR
    else:
        status = b""
    parts.append(field_len(_T15_LEN, status))
    flags = _FLAGS_REMOTE_PARENT if parent_id is not None else _FLAGS_LOCAL  # a parent is always remote
    parts.append(field_fixed32(_T16_FIXED32, flags))
    return b"".join(parts)


def encode_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON: protobuf JSON mapping with integer enums and hex (not base64) trace and span ids."""
    from google.protobuf import json_format  # http/json only

    data = json_format.MessageToDict(request, use_integers_for_enums=True)
    # Some receivers (rotel) refuse an object without the field, which MessageToDict omits when empty.
    data.setdefault("resourceSpans", [])
    for resource_spans in data.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                for field in ("traceId", "spanId", "parentSpanId"):
                    if span.get(field):
                        span[field] = base64.b64decode(span[field]).hex()
    return msgspec.json.encode(data)


# --- transports shared by all instances ------------------------------------------------------------------


class _Transports:
    """What every instance on one event loop shares: one HTTP client and an LRU of gRPC channels.

    The HTTP client caps connections per origin, so one slow endpoint cannot take every socket;
    gRPC channels multiplex calls on one connection each and hold no thread of their own.
    """

    MAX_CHANNELS: ClassVar[int] = 256
    PIN_SECONDS: ClassVar[float] = 60.0
    """How long a checked gRPC target keeps the address it was resolved to before it is resolved again."""
    __slots__ = ("_http", "_channels", "_closing", "_pins")

    def __init__(self) -> None:
        self._http: HttpClient | None = None
        self._channels: collections.OrderedDict[tuple[str, bool, str], grpc.aio.Channel]
        self._channels = collections.OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        # (target, tls, policy) -> (expiry, "ipv4:a.b.c.d:port"): addresses checked against a destination policy
        self._pins: collections.OrderedDict[tuple[str, bool, DestinationPolicy], tuple[float, str]]
        self._pins = collections.OrderedDict()

    async def checked_channel(self, target: str, tls: bool, policy: DestinationPolicy) -> grpc.aio.Channel:
        """A channel to ``target`` that connects only to an address ``policy`` allows: the host is resolved here,
        every address checked, and the channel is made for the first allowed address (gRPC then never resolves
        the name itself); the name stays the authority and the TLS name. Resolved again after
        :attr:`PIN_SECONDS` or when the pinned address fails (:meth:`unpin`)."""
        if policy.trusted:
            return self.channel(target, tls)
        loop = asyncio.get_running_loop()
        key = (target, tls, policy)
        pin = self._pins.get(key)
        if pin is None or pin[0] < loop.time():
            host, _, port = target.rpartition(":")
            host = host.strip("[]")
            try:
                infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            except OSError as exc:
                raise OtelExportError(f"otel: cannot resolve {host}: {exc}", kind="connection") from None
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            allowed = [a for a in addresses if policy.address_problem(a, host) is None]
            if not allowed:
                reason = policy.address_problem(addresses[0], host) if addresses else "no address"
                raise OtelExportError(f"otel: refused: {reason}", kind="refused")
            address = allowed[0]
            pinned = f"ipv6:[{address}]:{port}" if ":" in address else f"ipv4:{address}:{port}"
            pin = self._pins[key] = (loop.time() + self.PIN_SECONDS, pinned)
            while len(self._pins) > self.MAX_CHANNELS:
                self._pins.popitem(last=False)
        return self.channel(pin[1], tls, authority=target)

    def unpin(self, target: str, tls: bool, policy: DestinationPolicy) -> None:
        self._pins.pop((target, tls, policy), None)

    def http(self) -> HttpClient:
        if self._http is None or self._http.closed:
            self._http = HttpClient(user_agent=_USER_AGENT, max_per_origin=64, max_connections=512)
        return self._http

    def channel(self, target: str, tls: bool, authority: str = "") -> grpc.aio.Channel:
        key = (target, tls, authority)
        channel = self._channels.get(key)
        if channel is not None:
            self._channels.move_to_end(key)
            return channel
        options = [("grpc.primary_user_agent", _USER_AGENT), ("grpc.max_send_message_length", 64 << 20)]
        if authority:  # an address target pinned for a name: the name stays the authority and the TLS name
            options += [("grpc.default_authority", authority),
                        ("grpc.ssl_target_name_override", authority.rpartition(":")[0].strip("[]"))]
        import grpc  # ~15 ms: imported by a sink that uses the grpc protocol only

        channel = (grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options=options) if tls
                   else grpc.aio.insecure_channel(target, options=options))
        self._channels[key] = channel
        while len(self._channels) > self.MAX_CHANNELS:
            _, evicted = self._channels.popitem(last=False)
            # A grace period lets a call still running on the evicted channel finish.
            task = asyncio.ensure_future(evicted.close(grace=OtelSink.send_timeout))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return channel

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        channels, self._channels = list(self._channels.values()), collections.OrderedDict()
        for channel in channels:
            await channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


# --- the sink --------------------------------------------------------------------------------------------


class OtelSink(Sink):
    """Exports each event as one OTLP span to the instance's endpoint, with its headers and resource."""

    callback_name = "otel"
    Vars = OtelVars
    max_batch_size = 200
    send_timeout = 15.0
    callback_vars: OtelVars

    # Keyed by event loop: HTTP connections and grpc.aio channels belong to the loop that made them.
    _shared: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Transports]] = (
        weakref.WeakKeyDictionary())

    __slots__ = ("_protocol", "_url", "_target", "_tls", "_headers", "_resource_attributes", "_display",
                 "_pb_resource_cache", "_http_headers")

    @classmethod
    def destinations(cls, callback_vars: CallbackVars) -> list[tuple[str, str]]:
        assert isinstance(callback_vars, OtelVars)
        return [("otel_endpoint", callback_vars.otel_endpoint)]

    def __init__(self, callback_vars: OtelVars) -> None:
        super().__init__(callback_vars)
        found = problems({"otel_endpoint": callback_vars.otel_endpoint,
                          "otel_protocol": callback_vars.otel_protocol,
                          "otel_headers": callback_vars.otel_headers,
                          "otel_resource_attributes": callback_vars.otel_resource_attributes})
        if found:
            raise ValueError("; ".join(found))
        self._protocol = callback_vars.otel_protocol
        self._url = self._target = ""
        self._tls = False
        if self._protocol == "grpc":
            self._target, self._tls = _grpc_target(callback_vars.otel_endpoint)
        else:
            self._url = _http_url(callback_vars.otel_endpoint)
        secret = callback_vars.otel_headers.get_secret_value() if callback_vars.otel_headers else ""
        self._headers = parse_key_values(secret, what="otel_headers")
        self._display = f"{self._protocol} {_display(callback_vars.otel_endpoint)}"
        attributes = callback_vars.otel_resource_attributes
        if isinstance(attributes, str):
            attributes = parse_key_values(attributes, what="otel_resource_attributes")
        self._pb_resource_cache: bytes | None = None  # built on first encode: instances stay cheap until used
        self._http_headers: bytes | None = None  # the request head's header lines, on first send
        # A plain dict, not the SDK's Resource (~370 bytes more an instance, with its lock and bounded dict: 10,000
        # teams hold 10,000 instances); a Resource is built from it when the encoded resource is first needed.
        self._resource_attributes: dict[str, Any] = {
            "telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": _sdk_version(), **(attributes or {}),
            "service.name": callback_vars.otel_service_name,
        }

    @property
    def _resource(self) -> Resource:
        """This instance's OTel resource: service name, SDK facts and ``otel_resource_attributes``."""
        return Resource(self._resource_attributes)

    def secret_forms(self) -> Iterable[str]:
        """``otel_headers`` as written, each header value as sent (percent-decoded), the credential after a
        scheme word (``Bearer x``), and the values of the endpoint's query string (a token may ride there)."""
        yield from super().secret_forms()
        for value in self._headers.values():
            yield value
            scheme, _, credential = value.partition(" ")
            if credential.strip() and scheme.isalpha():
                yield credential.strip()
        if "://" in self.callback_vars.otel_endpoint:
            query = urllib.parse.urlsplit(self.callback_vars.otel_endpoint).query
            for _, value in urllib.parse.parse_qsl(query):
                yield value

    @classmethod
    def env_defaults(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """The standard OTel variables for a global ``otel`` entry written without vars.

        ``OTEL_EXPORTER_OTLP_[TRACES_]{ENDPOINT,PROTOCOL,HEADERS}``, ``OTEL_SERVICE_NAME``,
        ``OTEL_RESOURCE_ATTRIBUTES``; LiteLLM's ``OTEL_ENDPOINT``, ``OTEL_HEADERS``, ``OTEL_EXPORTER`` last.
        """
        found: dict[str, Any] = {}
        protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                    or {"otlp_grpc": "grpc", "otlp_http": "http/protobuf", "grpc": "grpc",
                        "http/protobuf": "http/protobuf", "http/json": "http/json"}.get(
                            environ.get("OTEL_EXPORTER", "").strip().lower()))
        if protocol:
            found["otel_protocol"] = protocol.strip()
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if not endpoint and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
            if found.get("otel_protocol", "http/protobuf") != "grpc":
                # The spec: the generic endpoint is a base URL to which the signal path is appended.
                endpoint = endpoint.rstrip("/") + "/v1/traces"
        endpoint = endpoint or environ.get("OTEL_ENDPOINT")
        if endpoint:
            found["otel_endpoint"] = endpoint.strip()
        headers = (environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
                   or environ.get("OTEL_EXPORTER_OTLP_HEADERS")
                   or environ.get("OTEL_HEADERS"))
        if headers:
            found["otel_headers"] = headers
        if environ.get("OTEL_SERVICE_NAME"):
            found["otel_service_name"] = environ["OTEL_SERVICE_NAME"]
        if environ.get("OTEL_RESOURCE_ATTRIBUTES"):
            found["otel_resource_attributes"] = environ["OTEL_RESOURCE_ATTRIBUTES"]
        return found

    @classmethod
    def _transports(cls) -> _Transports:
        loop = asyncio.get_running_loop()
        shared = cls._shared.get(loop)
        if shared is None:
            shared = cls._shared[loop] = _Transports()
        return shared

    def encode(self, batch: Sequence[LogEvent]) -> bytes:
        """The OTLP body for ``batch`` in this instance's encoding (CPU only: ~25 us per span)."""
        return self._assemble([wire_span(e) for e in batch])

    def _assemble(self, spans: list[bytes]) -> bytes:
        if self._pb_resource_cache is None:
            # ResourceSpans.resource; a Resource built from attributes alone has no schema_url (field 3) to add
            self._pb_resource_cache = field_len(_T1_LEN, _encode_resource(self._resource).SerializeToString())
        scope_spans = field_len(_T1_LEN, _PB_SCOPE_BYTES) + b"".join([field_len(_T2_LEN, span) for span in spans])
        if _SCOPE.schema_url:
            scope_spans += field_len(_T3_LEN, _SCOPE.schema_url.encode())
        resource_spans = self._pb_resource_cache + field_len(_T2_LEN, scope_spans)
        body = field_len(_T1_LEN, resource_spans)  # ExportTraceServiceRequest.resource_spans
        if self._protocol == "http/json":
            return encode_json(ExportTraceServiceRequest.FromString(body))
        return body

    async def send(self, batch: Sequence[LogEvent]) -> None:
        if not batch:
            return
        # Encoded on the event loop, yielding to it every ENCODE_CHUNK events (~1 ms) so a big batch never
        # stalls requests. A thread pool was measured to buy nothing (the GIL; one core per worker) and cost
        # threads that grew with the batch sizes, i.e. with the number of teams.
        spans: list[bytes] = []
        for start in range(0, len(batch), ENCODE_CHUNK):
            if start:
                await asyncio.sleep(0)
            spans += [wire_span(e) for e in batch[start:start + ENCODE_CHUNK]]
        body = self._assemble(spans)
        # A little under send_timeout, so our own timeout (with a clear message) fires before the core's.
        response = await self._export(body, timeout=self.send_timeout * 0.9)
        rejected = response.partial_success.rejected_spans
        if rejected:
            # OTLP says not to retry a partial success: the same spans would be rejected again.
            logger.warning("otel sink %s rejected %d of %d spans: %s", self._display, rejected, len(batch),
                           Scrubber.for_sink(self).excerpt(response.partial_success.error_message))

    async def _export(self, body: bytes, *, timeout: float) -> ExportTraceServiceResponse:
        if self._protocol == "grpc":
            return await self._export_grpc(body, timeout)
        return await self._export_http(body, timeout)

    async def _export_http(self, body: bytes, timeout: float) -> ExportTraceServiceResponse:
        if self._http_headers is None:
            content_type = "application/json" if self._protocol == "http/json" else "application/x-protobuf"
            self._http_headers = encode_headers({**self._headers, "Content-Type": content_type})
        try:
            answer = await self._transports().http().post(self._url, body, headers=self._http_headers,
                                                          timeout=timeout, policy=self.destination_policy)
        except HttpClientError as exc:
            if exc.kind == "timeout":
                raise OtelExportError(f"otel: {self._display} did not answer within {timeout:g}s",
                                      kind="timeout") from None
            raise OtelExportError(f"otel: {self._display} unreachable: {exc.kind}: {exc}",
                                  kind="connection") from None
        if answer.status // 100 != 2:
            kind = "auth" if answer.status in (401, 403) else "http_status"
            # A short, scrubbed excerpt: a collector or proxy may answer with the request, headers included.
            snippet = Scrubber.for_sink(self).excerpt(answer.body)
            raise OtelExportError(f"otel: {self._display} answered HTTP {answer.status}: {snippet}",
                                  kind=kind)
        return _parse_response(answer.body, answer.headers.get("content-type", ""))

    async def _export_grpc(self, body: bytes, timeout: float) -> ExportTraceServiceResponse:
        channel = await self._transports().checked_channel(self._target, self._tls, self.destination_policy)
        # The body is already serialised (in the pool): send the bytes as they are.
        export = channel.unary_unary(_GRPC_EXPORT, request_serializer=None,
                                     response_deserializer=ExportTraceServiceResponse.FromString)
        metadata = tuple((key.lower(), value) for key, value in self._headers.items())
        import grpc

        try:
            return await export(body, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:  # a pinned address that stopped answering: resolve anew
                self._transports().unpin(self._target, self._tls, self.destination_policy)
            kind = {grpc.StatusCode.UNAUTHENTICATED: "auth", grpc.StatusCode.PERMISSION_DENIED: "auth",
                    grpc.StatusCode.UNAVAILABLE: "connection",
                    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout"}.get(code, "grpc_status")
            details = Scrubber.for_sink(self).excerpt(exc.details() or "")
            raise OtelExportError(f"otel: {self._display} answered gRPC {code.name}: {details}",
                                  kind=kind) from None

    async def health_check(self) -> HealthResult:
        """An empty OTLP export to the endpoint with the instance's headers: reachability and auth."""
        try:
            empty = encode_json(ExportTraceServiceRequest()) if self._protocol == "http/json" else b""
            await asyncio.wait_for(self._export(empty, timeout=_HEALTH_TIMEOUT),
                                   _HEALTH_TIMEOUT + 1)
        except OtelExportError as exc:
            return HealthResult(healthy=False, details=str(exc), error_kind=exc.kind)
        except TimeoutError:
            return HealthResult(healthy=False, details=f"otel: {self._display} did not answer within "
                                f"{_HEALTH_TIMEOUT:g}s", error_kind="timeout")
        except Exception as exc:  # a health check reports, it does not raise
            return HealthResult(healthy=False, details=f"otel: {self._display}: {type(exc).__name__}",
                                error_kind="unexpected")
        return HealthResult(healthy=True, details=f"otel: {self._display} accepted an empty export")

    async def aclose(self) -> None:
        """Nothing to release: instances hold no connection or thread of their own (see :meth:`shutdown`)."""

    @classmethod
    async def shutdown(cls) -> None:
        """Close the transports of the running loop (and forget those of loops that are gone)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        for other in [lp for lp in list(cls._shared) if lp is not loop and lp.is_closed()]:
            cls._shared.pop(other, None)
        shared = cls._shared.pop(loop, None) if loop is not None else None
        if shared is not None:
            await shared.aclose()


def _parse_response(payload: bytes, content_type: str) -> ExportTraceServiceResponse:
    response = ExportTraceServiceResponse()
    if not payload:
        return response
    try:
        if "json" in content_type:
            json_format.Parse(payload, response, ignore_unknown_fields=True)
        else:
            response.ParseFromString(payload)
    except Exception:  # a 2xx with an odd body still means the spans were taken
        return ExportTraceServiceResponse()
    return response


def _sdk_version() -> str:
    from opentelemetry.sdk.version import __version__ as version

    return version
