"""The ``datadog`` sink: log events to Datadog's logs intake (API v2), directly or through an agent.

One request is ``POST /api/v2/logs`` with a gzip-compressed JSON array of at most 1,000 entries and 5 MB
(uncompressed); a 413 answer halves the request until it fits. Every entry carries ``ddsource``, ``service``,
``hostname``, ``ddtags`` and the event's JSON as ``message``.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import ipaddress
import re
import socket
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec

from sluicegate.sinks.base import CallbackVars, HealthResult, SecretStr, Sink
from sluicegate.sinks.destinations import DestinationPolicy, aiohttp_connector_factory
from sluicegate.sinks.scrub import Scrubber
from sluicegate.sinks.vars import VarsError, decode_vars

if TYPE_CHECKING:
    import httpx

    from sluicegate.events import LogEvent

__all__ = (
    "DEFAULT_AGENT_PORT",
    "DEFAULT_SITE",
    "MAX_ENTRIES_PER_REQUEST",
    "MAX_PAYLOAD_BYTES",
    "DatadogIntakeError",
    "DatadogSink",
    "DatadogVars",
    "config_problems",
)

DEFAULT_SITE = "datadoghq.com"
DEFAULT_AGENT_PORT = 10518
"""LiteLLM's default for ``LITELLM_DD_AGENT_PORT``, so agent set-ups move over unchanged."""
MAX_ENTRIES_PER_REQUEST = 1000
MAX_PAYLOAD_BYTES = 5_000_000
"""Datadog's 5 MB uncompressed limit, read as decimal megabytes so either reading of "MB" is respected."""
MAX_MESSAGE_BYTES = 1_000_000
"""Datadog truncates a log above 1 MB anyway; truncating first means one entry can never exceed a request."""
_GZIP_INLINE_BYTES = 256 * 1024
"""Bodies above this are compressed in a worker thread so a large batch never stalls the event loop."""

_LIMITS = {"max_connections": 64, "max_keepalive_connections": 64, "keepalive_expiry": 30}
"""One pool for every instance: connections are bounded however many teams send. (``httpx.Limits`` keyword
arguments: httpx and aiohttp, ~0.1 s to import, are imported when a sink first sends, not when the plugin loads.)"""

_ENV_VARS = {
    "DD_API_KEY": "dd_api_key",
    "DD_SITE": "dd_site",
    "LITELLM_DD_AGENT_HOST": "dd_agent_host",
    "LITELLM_DD_AGENT_PORT": "dd_agent_port",
    "DD_SOURCE": "dd_source",
    "DD_SERVICE": "dd_service",
}
"""Process environment names (LiteLLM's) read only for a ``datadog`` sink named globally without vars."""

_RESERVED_VARS = frozenset({"turn_off_message_logging"})


class DatadogVars(CallbackVars, frozen=True):
    """Callback variables of the ``datadog`` sink."""

    dd_api_key: SecretStr | None = None
    """API key sent as ``DD-API-KEY``; required unless sending through an agent."""
    dd_site: str = DEFAULT_SITE
    """Datadog site, e.g. ``datadoghq.eu`` or ``us5.datadoghq.com`` (a leading ``app.`` is ignored)."""
    dd_agent_host: str | None = None
    """Send to ``http://{dd_agent_host}:{dd_agent_port}/api/v2/logs`` (an agent or proxy) instead of the site."""
    dd_agent_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = DEFAULT_AGENT_PORT
    dd_service: str = "litellm-server"
    """The entries' ``service`` (LiteLLM's default, so existing facets and monitors keep matching)."""
    dd_source: str = "litellm"
    """The entries' ``ddsource`` (LiteLLM's default)."""
    dd_tags: str | list[str] = ""
    """Extra tags added to every entry: ``"env:prod,region:eu"`` or a list of ``key:value`` strings."""


class DatadogIntakeError(RuntimeError):
    """The intake (or agent) refused a request; ``status`` is its HTTP status and ``kind`` a short error kind."""

    def __init__(self, message: str, *, status: int | None = None, kind: str = "http_status") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class _Entry(msgspec.Struct, omit_defaults=True):
    """One element of the intake's JSON array; ``status`` and ``dd.*`` are Datadog reserved attributes."""

    ddsource: str
    ddtags: str
    hostname: str
    service: str
    message: str
    status: str
    timestamp: int | None = None
    truncated: bool = False
    dd_trace_id: str | None = msgspec.field(default=None, name="dd.trace_id")
    dd_span_id: str | None = msgspec.field(default=None, name="dd.span_id")


_event_encoder = msgspec.json.Encoder()
_entry_encoder = msgspec.json.Encoder()


@functools.cache
def _hostname() -> str:
    return socket.gethostname()


def _normalise_site(site: str) -> str:
    site = site.strip().lower()
    for prefix in ("https://", "http://"):
        site = site.removeprefix(prefix)
    site = site.rstrip("/")
    # People paste the web UI's host (app.datadoghq.eu); the intake hosts hang off the bare site.
    return site.removeprefix("app.")


def _url_host(host: str) -> str:
    host = host.strip()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _tag_value(value: str) -> str:
    # A comma separates tags in ddtags; Datadog turns spaces into underscores itself, commas it cannot.
    return value.replace(",", "_").strip()[:190]


def _split_tags(tags: str | list[str]) -> list[str]:
    items = tags.split(",") if isinstance(tags, str) else tags
    return [t.strip() for t in items if t and t.strip()]


def _trace_ids(traceparent: str | None) -> tuple[str | None, str | None]:
    """Datadog's log-trace correlation ids from a W3C traceparent: low 64 bits of the trace id, in decimal."""
    if not traceparent:
        return None, None
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None, None
    try:
        trace_low, span = int(parts[1][16:], 16), int(parts[2], 16)
    except ValueError:
        return None, None
    if trace_low == 0 or span == 0:
        return None, None
    return str(trace_low), str(span)


def _truncate_utf8(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")


def config_problems(callback_vars: Mapping[str, Any]) -> list[str]:
    """Problems with raw ``datadog`` callback variables knowable at configuration time, as ``"field: reason"``.

    Type errors and unknown names are left to ``decode_vars`` (the core reports those). An entry with no
    variables at all is not reported: in LiteLLM's configs that is a key's redaction override of the global
    ``datadog`` entry, which the core resolves.
    """
    raw = {k: v for k, v in callback_vars.items() if k not in _RESERVED_VARS}
    if not raw:
        return []
    try:
        decoded = decode_vars(DatadogVars, raw)
    except VarsError:
        return []
    assert isinstance(decoded, DatadogVars)
    problems = []
    if decoded.dd_agent_host is not None:
        if not _is_host(decoded.dd_agent_host.strip()):
            problems.append("dd_agent_host: a host name or IP address, without scheme, port or path "
                            "(the port is dd_agent_port)")
    else:
        if not decoded.dd_api_key or not decoded.dd_api_key.get_secret_value().strip():
            problems.append("dd_api_key: required to send to Datadog directly (or set dd_agent_host for an agent)")
        if not _SITE.fullmatch(_normalise_site(decoded.dd_site)):
            problems.append(f"dd_site: expected a Datadog site such as {DEFAULT_SITE!r} or 'datadoghq.eu' "
                            "(a host name: letters, digits, '-' and '.', no port, path or other characters)")
    if decoded.dd_api_key is not None and any(not " " <= c <= "~" for c in decoded.dd_api_key.get_secret_value()):
        # It travels as the DD-API-KEY header: never echoed, and only printable ASCII can be sent.
        problems.append("dd_api_key: must be printable ASCII (no CR, LF, NUL, other control or non-ASCII "
                        "characters)")
    return problems


_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_SITE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def _is_host(host: str) -> bool:
    """A host name (``_`` allowed: container names) or an IPv4/IPv6 address, bracketed or not; no port."""
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
        return True
    except ValueError:
        pass
    name = host.lower().removesuffix(".")
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in name.split("."))


class DatadogSink(Sink):
    """Sends batches to ``/api/v2/logs`` through one pooled async httpx client shared by every instance."""

    callback_name = "datadog"
    Vars = DatadogVars
    max_batch_size = MAX_ENTRIES_PER_REQUEST
    send_timeout = 30.0
    health_timeout: ClassVar[float] = 5.0
    callback_vars: DatadogVars

    # One client per running event loop (httpx pools are loop-bound), shared by all instances.
    _clients: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]] = (
        weakref.WeakKeyDictionary())
    # Instances of API-written callbacks: one client per loop and destination policy, its resolver checking
    # every address before aiohttp connects to it.
    _checked_clients: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                         dict[DestinationPolicy, httpx.AsyncClient]]] = (
        weakref.WeakKeyDictionary())
    _transport_wrapper: ClassVar[Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None] = None
    """Tests only: wraps the shared client's transport (e.g. to route the site hosts to a loopback intake)."""

    __slots__ = ("_base_tags", "_closed", "_delivered", "_headers", "_intake_url", "_validate_url")

    def __init__(self, callback_vars: CallbackVars) -> None:
        super().__init__(callback_vars)
        v = self.callback_vars
        if v.dd_agent_host:
            base = f"http://{_url_host(v.dd_agent_host)}:{v.dd_agent_port}"
            self._intake_url = f"{base}/api/v2/logs"
            self._validate_url = f"{base}/api/v1/validate"
        else:
            site = _normalise_site(v.dd_site)
            self._intake_url = f"https://http-intake.logs.{site}/api/v2/logs"
            self._validate_url = f"https://api.{site}/api/v1/validate"
        self._headers = {"DD-API-KEY": v.dd_api_key.get_secret_value()} if v.dd_api_key else {}
        self._base_tags = ",".join(_split_tags(v.dd_tags))
        self._delivered: set[str] = set()
        self._closed = False

    # -- shared client -----------------------------------------------------------------------------------

    @classmethod
    def destinations(cls, callback_vars: CallbackVars) -> list[tuple[str, str]]:
        assert isinstance(callback_vars, DatadogVars)
        if callback_vars.dd_agent_host:
            agent = f"http://{_url_host(callback_vars.dd_agent_host)}:{callback_vars.dd_agent_port}"
            return [("dd_agent_host", agent)]
        site = _normalise_site(callback_vars.dd_site)
        return [("dd_site", f"https://http-intake.logs.{site}"), ("dd_site", f"https://api.{site}")]

    @classmethod
    def _client(cls, policy: DestinationPolicy | None = None) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if policy is not None and not policy.trusted:
            return cls._checked_client(loop, policy)
        client = DatadogSink._clients.get(loop)
        if client is None or client.is_closed:
            # httpx's API on aiohttp's connection pool (as the core's upstream client): httpcore's pool does
            # O(connections²) bookkeeping per request, which at 64 busy connections costs milliseconds of
            # event-loop time per request.
            import httpx
            from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient

            limits = httpx.Limits(**_LIMITS)
            wrapper = DatadogSink._transport_wrapper
            client = HttpxAiohttpClient(
                transport=wrapper(AiohttpTransport(limits=limits)) if wrapper else None,
                limits=limits,
                timeout=httpx.Timeout(20.0, connect=5.0),
                follow_redirects=False,  # a redirect must not carry DD-API-KEY to another host
            )
            DatadogSink._clients[loop] = client
        return client

    @classmethod
    def _checked_client(cls, loop: asyncio.AbstractEventLoop, policy: DestinationPolicy) -> httpx.AsyncClient:
        clients = DatadogSink._checked_clients.setdefault(loop, {})
        client = clients.get(policy)
        if client is None or client.is_closed:
            import httpx
            from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient

            limits = httpx.Limits(**_LIMITS)
            session = aiohttp_connector_factory(policy, limit=limits.max_connections or 100,
                                                keepalive_timeout=limits.keepalive_expiry or 30.0)
            transport: httpx.AsyncBaseTransport = AiohttpTransport(limits=limits, client=session)
            wrapper = DatadogSink._transport_wrapper
            client = clients[policy] = HttpxAiohttpClient(
                transport=wrapper(transport) if wrapper else transport, limits=limits,
                timeout=httpx.Timeout(20.0, connect=5.0), follow_redirects=False,
                trust_env=False)  # no proxy from the environment: the check must see the real destination
        return client

    @classmethod
    async def shutdown(cls) -> None:
        clients = list(DatadogSink._clients.items())
        DatadogSink._clients.clear()
        clients += [(loop, client) for loop, by_policy in DatadogSink._checked_clients.items()
                    for client in by_policy.values()]
        DatadogSink._checked_clients.clear()
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, client in clients:
            # A client can only be closed on its own loop; one whose loop is gone is simply dropped.
            if loop is current:
                await client.aclose()

    @classmethod
    def env_defaults(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        return {var: environ[name] for name, var in _ENV_VARS.items() if environ.get(name)}

    # -- delivery ------------------------------------------------------------------------------------------

    @property
    def _is_agent(self) -> bool:
        return bool(self.callback_vars.dd_agent_host)

    def _entry(self, event: LogEvent) -> bytes:
        message = _event_encoder.encode(event).decode()
        truncated = len(message) > MAX_MESSAGE_BYTES // 4 and len(message.encode()) > MAX_MESSAGE_BYTES
        if truncated:
            message = _truncate_utf8(message, MAX_MESSAGE_BYTES)
        meta = event.metadata
        tags = [
            f"team:{_tag_value(meta.user_api_key_team_alias or meta.user_api_key_team_id)}"
            if (meta.user_api_key_team_alias or meta.user_api_key_team_id) else "",
            f"team_id:{_tag_value(meta.user_api_key_team_id)}" if meta.user_api_key_team_id else "",
            f"key_alias:{_tag_value(meta.user_api_key_alias)}" if meta.user_api_key_alias else "",
            f"model:{_tag_value(event.model)}" if event.model else "",
            f"status:{event.status}",
            self._base_tags,
        ]
        # the request's tags (metadata.tags, x-litellm-tags, the key's and team's), as LiteLLM's request_tag:<tag>
        tags += [f"request_tag:{_tag_value(tag)}" for tag in event.request_tags]
        trace_id, span_id = _trace_ids(meta.traceparent)
        entry = _Entry(
            ddsource=self.callback_vars.dd_source,
            ddtags=",".join(t for t in tags if t),
            hostname=_hostname(),
            service=self.callback_vars.dd_service,
            message=message,
            status="error" if event.status == "failure" else "info",
            timestamp=int(event.startTime * 1000) if event.startTime > 0 else None,
            truncated=truncated,
            dd_trace_id=trace_id,
            dd_span_id=span_id,
        )
        return _entry_encoder.encode(entry)

    async def send(self, batch: Sequence[LogEvent]) -> None:
        if not batch:
            return
        if self._closed:
            raise RuntimeError("datadog: send() after aclose()")
        if not self._headers and not self._is_agent:
            raise DatadogIntakeError("datadog: no dd_api_key configured for the Datadog site", kind="config")
        # The core retries a failed batch whole; events a previous attempt already delivered (before a
        # split half failed) are skipped, because the intake has no idempotency key to dedupe them.
        ids = {event.id for event in batch}
        self._delivered &= ids
        pending = [(e.id, self._entry(e)) for e in batch if e.id not in self._delivered]
        delivered: list[str] = []
        try:
            for chunk in _chunks(pending):
                await self._post(chunk, delivered)
        except BaseException:
            self._delivered.update(delivered)
            raise
        self._delivered.clear()

    async def _post(self, chunk: list[tuple[str, bytes]], delivered: list[str]) -> None:
        body = b"[" + b",".join(entry for _, entry in chunk) + b"]"
        if len(body) > _GZIP_INLINE_BYTES:
            compressed = await asyncio.to_thread(gzip.compress, body, 6)
        else:
            compressed = gzip.compress(body, 6)
        headers = {**self._headers, "Content-Type": "application/json", "Content-Encoding": "gzip"}
        import httpx

        try:
            response = await self._client(self.destination_policy).post(self._intake_url, content=compressed,
                                                                        headers=headers)
        except httpx.HTTPError as exc:
            kind, name = _transport_error(exc)
            what = "timed out" if kind == "timeout" else "could not be reached"
            raise DatadogIntakeError(f"datadog: {self._intake_url} {what} ({name})", kind=kind) from None
        if response.is_success:
            delivered.extend(event_id for event_id, _ in chunk)
            return
        if response.status_code == 413 and len(chunk) > 1:
            half = len(chunk) // 2
            await self._post(chunk[:half], delivered)
            await self._post(chunk[half:], delivered)
            return
        raise self._error(response, f"refused {len(chunk)} entries")

    def _error(self, response: httpx.Response, what: str) -> DatadogIntakeError:
        status = response.status_code
        kind = {401: "auth", 403: "auth", 413: "too_large", 429: "rate_limited"}.get(status, "http_status")
        # A short excerpt, scrubbed of the key in every form: an intake or proxy may answer with our request.
        text = Scrubber.for_sink(self).excerpt(response.content)
        return DatadogIntakeError(f"datadog: {self._intake_url} {what}: HTTP {status} {text}".rstrip(),
                                  status=status, kind=kind)

    # -- health --------------------------------------------------------------------------------------------

    async def health_check(self) -> HealthResult:
        if not self._headers and not self._is_agent:
            return HealthResult(healthy=False, error_kind="config",
                                details="datadog: no dd_api_key configured for the Datadog site")
        import httpx

        try:
            async with asyncio.timeout(self.health_timeout):
                response = await self._client(self.destination_policy).get(self._validate_url,
                                                                           headers=self._headers)
        except TimeoutError:
            return HealthResult(healthy=False, error_kind="timeout",
                                details=f"datadog: {self._validate_url} did not answer within {self.health_timeout}s")
        except httpx.HTTPError as exc:
            kind, name = _transport_error(exc)
            return HealthResult(healthy=False, error_kind=kind,
                                details=f"datadog: cannot reach {self._validate_url} ({name})")
        status = response.status_code
        if status in (401, 403):
            return HealthResult(healthy=False, error_kind="auth",
                                details=f"datadog: {self._validate_url} rejected the API key (HTTP {status})")
        if self._is_agent and status in (404, 405, 501):
            # Agents and log proxies need not implement validate; an HTTP answer proves the agent is up.
            return HealthResult(healthy=True,
                                details=f"datadog: agent at {self._validate_url} is reachable "
                                        f"(it does not validate API keys: HTTP {status})")
        if response.is_success:
            valid = True
            if not self._is_agent:
                try:
                    valid = msgspec.json.decode(response.content).get("valid") is True
                except (msgspec.DecodeError, AttributeError):
                    valid = False
            if valid:
                return HealthResult(healthy=True, details=f"datadog: {self._validate_url} accepted the API key")
            return HealthResult(healthy=False, error_kind="auth",
                                details=f"datadog: {self._validate_url} did not confirm the API key as valid")
        return HealthResult(healthy=False, error_kind="http_status",
                            details=f"datadog: {self._validate_url} answered HTTP {status}")

    async def aclose(self) -> None:
        # The HTTP client is shared by every instance and released by shutdown(); nothing else is held.
        self._closed = True
        self._delivered.clear()


def _transport_error(exc: httpx.HTTPError) -> tuple[str, str]:
    """``(error kind, exception name)``, looking through the aiohttp transport's mapping.

    httpx-aiohttp reports a refused connection as ``httpx.ConnectTimeout``; the aiohttp cause tells a real
    timeout from an unreachable host.
    """
    cause = exc.__cause__ or exc
    name = type(cause).__name__
    timed_out = isinstance(cause, TimeoutError) or "Timeout" in name
    return ("timeout" if timed_out else "connection"), name


def _chunks(entries: list[tuple[str, bytes]]) -> Iterator[list[tuple[str, bytes]]]:
    """Split encoded entries into requests within the intake's entry-count and uncompressed-size limits."""
    chunk: list[tuple[str, bytes]] = []
    size = 2  # the array's brackets
    for item in entries:
        extra = len(item[1]) + (1 if chunk else 0)
        if chunk and (len(chunk) >= MAX_ENTRIES_PER_REQUEST or size + extra > MAX_PAYLOAD_BYTES):
            yield chunk
            chunk, size, extra = [], 2, len(item[1])
        chunk.append(item)
        size += extra
    if chunk:
        yield chunk
