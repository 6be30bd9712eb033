"""The ``langsmith`` sink: one LangSmith ``llm`` run per event, posted in batches to ``/runs/multipart``.

That is the endpoint the official ``langsmith`` SDK ingests runs through (``Client.multipart_ingest`` and its
background tracing thread): one ``multipart/form-data`` request per batch, each run as a ``post.{run_id}`` part
(the run without its large fields) followed by ``post.{run_id}.inputs``, ``.outputs``, ``.extra`` and ``.error``
parts, all ``application/json``, authenticated with ``x-api-key``. The SDK's own client is not used for delivery:
it starts a background thread (and a thread pool under load) per client, i.e. per project.

Every instance (one per API key and project) holds a few pre-encoded strings; delivery goes through the core's
pooled HTTP client, one per event loop, shared by every instance, under the instance's ``destination_policy``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import re
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import msgspec

from sluicegate import CallbackVars, HealthResult, SecretStr, Sink
from sluicegate.net.http import HttpClient, HttpClientError, encode_headers
from sluicegate.sinks.scrub import Scrubber
from sluicegate_langsmith_sink import __version__

if TYPE_CHECKING:
    from sluicegate import LogEvent

__all__ = (
    "DEFAULT_BASE_URL",
    "DEFAULT_PROJECT",
    "MULTIPART_PATH",
    "LangsmithDeliveryError",
    "LangsmithSink",
    "LangsmithVars",
    "encode_multipart",
    "event_to_run",
    "run_id",
    "sampled",
    "validation_problems",
)

DEFAULT_BASE_URL = "https://api.smith.langchain.com"
DEFAULT_PROJECT = "litellm-completion"
"""LiteLLM's default project name, so a migrated configuration logs where it did."""
MULTIPART_PATH = "/runs/multipart"
SESSIONS_PATH = "/sessions"
RUN_NAME = "LLMRun"
"""LiteLLM's run name."""
MAX_REQUEST_BYTES = 20 * 1024 * 1024
"""LangSmith's default ``batch_ingest_config.size_limit_bytes``: a bigger batch is split into requests."""
HEALTH_TIMEOUT = 5.0
_USER_AGENT = f"sluicegate-langsmith-sink/{__version__}"
_RUN_NAMESPACE = uuid.UUID("5b0f6a4e-5a8d-4a4f-9d8e-4f1f5a1c7e21")
_json = msgspec.json.Encoder(enc_hook=repr)  # repr: never fail a batch on one odd value
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


class LangsmithVars(CallbackVars, frozen=True):
    """Callback variables of the ``langsmith`` sink (LiteLLM's names)."""

    langsmith_api_key: SecretStr
    """Sent as ``x-api-key``."""
    langsmith_project: str | None = None
    """Project (LangSmith "session") the runs go to; ``None``: ``LANGSMITH_PROJECT`` or ``litellm-completion``."""
    langsmith_base_url: str | None = None
    """API base URL; ``None``: ``LANGSMITH_BASE_URL`` / ``LANGSMITH_ENDPOINT`` or the hosted service."""
    langsmith_sampling_rate: float | None = None
    """Share of events sent, 0.0-1.0 (``None``: all). Decided per event id, so a retry decides the same way."""


class LangsmithDeliveryError(RuntimeError):
    """LangSmith did not accept a batch. ``status_code`` is ``None`` when no answer came back."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


# --- configuration ----------------------------------------------------------------------------------------


def normalize_base_url(value: str | None, environ: Mapping[str, str] | None = None) -> str:
    environ = environ if environ is not None else {}
    text = (value or environ.get("LANGSMITH_BASE_URL") or environ.get("LANGSMITH_ENDPOINT")
            or DEFAULT_BASE_URL).strip()
    return text.rstrip("/")


def _is_host_name(host: str) -> bool:
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


def validation_problems(callback_vars: Mapping[str, Any]) -> list[str]:
    """Problems knowable at configuration time, as ``"field: reason"`` (never echoing the key)."""
    problems: list[str] = []
    url = callback_vars.get("langsmith_base_url")
    if isinstance(url, str):
        text = url.strip()
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises for a bad port
        except ValueError as exc:
            problems.append(f"langsmith_base_url: not a valid URL ({exc})")
        else:
            if any(c <= " " or c == "\x7f" for c in text):
                problems.append("langsmith_base_url: must not contain spaces or control characters")
            elif parts.scheme not in ("http", "https") or not parts.hostname or not _is_host_name(parts.hostname):
                problems.append("langsmith_base_url: must be an http(s) URL with a host, e.g. "
                                "https://api.smith.langchain.com")
            elif parts.username or parts.password or parts.query or parts.fragment:
                problems.append("langsmith_base_url: must not carry credentials, a query or a fragment")
    rate = callback_vars.get("langsmith_sampling_rate")
    if rate is not None:
        try:
            value = float(rate)
        except (TypeError, ValueError):
            value = -1.0
        if not 0.0 <= value <= 1.0:
            problems.append("langsmith_sampling_rate: must be a number from 0 to 1")
    project = callback_vars.get("langsmith_project")
    if isinstance(project, str) and (not project.strip() or any(c < " " or c == "\x7f" for c in project)):
        problems.append("langsmith_project: must be a non-empty name without control characters")
    key = callback_vars.get("langsmith_api_key")
    key = key.get_secret_value() if isinstance(key, SecretStr) else key
    if isinstance(key, str) and (not key.strip() or any(c < " " or c == "\x7f" for c in key)):
        problems.append("langsmith_api_key: must be non-empty, without spaces or control characters")
    return problems


# --- event -> run -----------------------------------------------------------------------------------------


def run_id(event: LogEvent) -> uuid.UUID:
    """A UUID derived from the event id: the same event is always the same run (redelivery is an upsert)."""
    return uuid.uuid5(_RUN_NAMESPACE, event.id)


def sampled(event: LogEvent, rate: float | None) -> bool:
    """Whether ``event`` is sent at sampling ``rate``: decided by a hash of its id, so stable across retries."""
    if rate is None or rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = int.from_bytes(hashlib.blake2b(event.id.encode(), digest_size=8).digest(), "big")
    return digest / 2**64 < rate


def _time(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat()  # "+00:00", as the SDK writes it


def event_to_run(event: LogEvent, project: str) -> dict[str, Any]:
    """The run LangSmith stores for ``event``: the fields the SDK's ``create_run`` posts for a root ``llm`` run."""
    identifier = run_id(event)
    start = _time(event.startTime)
    end = _time(event.endTime or event.startTime)
    meta = event.metadata
    metadata = {key: value for key, value in {
        "ls_provider": event.custom_llm_provider, "ls_model_name": event.model, "ls_model_type": "chat",
        "model_group": event.model_group, "model_id": event.model_id, "call_type": event.call_type,
        "stream": event.stream, "cache_hit": event.cache_hit, "response_cost": event.response_cost,
        "user_api_key_hash": meta.user_api_key_hash, "user_api_key_alias": meta.user_api_key_alias,
        "user_api_key_team_id": meta.user_api_key_team_id, "user_api_key_team_alias": meta.user_api_key_team_alias,
        "request_id": meta.request_id, "sluicegate_event_id": event.id,
    }.items() if value is not None}
    outputs: dict[str, Any] | None = None
    if isinstance(event.response, dict):
        outputs = dict(event.response)
    elif event.response is not None:
        outputs = {"output": event.response}
    if outputs is not None and "usage_metadata" not in outputs:
        outputs["usage_metadata"] = {"input_tokens": event.prompt_tokens or 0,
                                     "output_tokens": event.completion_tokens or 0,
                                     "total_tokens": event.total_tokens or 0}
    run: dict[str, Any] = {
        "id": str(identifier),
        "trace_id": str(identifier),
        "dotted_order": f"{start.strftime('%Y%m%dT%H%M%S%fZ')}{identifier}",
        "parent_run_id": None,
        "name": RUN_NAME,
        "run_type": "llm",
        "start_time": _iso(start),
        "end_time": _iso(end),
        "session_name": project,
        "tags": [tag for tag in (event.model_group, meta.user_api_key_team_alias) if tag],
        "inputs": {"messages": event.messages, **({"invocation_params": event.model_parameters}
                                                  if event.model_parameters else {})},
        "outputs": outputs,
        "extra": {"metadata": metadata, "invocation_params": event.model_parameters or {}},
        "error": event.error_str if event.status == "failure" else None,
    }
    return run


_LARGE_FIELDS = ("inputs", "outputs", "events", "extra", "error", "serialized")
"""Sent as their own parts, after the run's main part (as the SDK does)."""


def _part(boundary: bytes, name: str, data: bytes) -> bytes:
    return b"".join((b"--", boundary, b'\r\nContent-Disposition: form-data; name="', name.encode(),
                     b'"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n' % len(data), data, b"\r\n"))


def encode_run_parts(boundary: bytes, run: Mapping[str, Any]) -> bytes:
    """The parts of one run: ``post.{id}`` (the run without its large fields), then one part per large field."""
    identifier = run["id"]
    main = {key: value for key, value in run.items() if key not in _LARGE_FIELDS and value is not None}
    parts = [_part(boundary, f"post.{identifier}", _json.encode(main))]
    for field in _LARGE_FIELDS:
        value = run.get(field)
        if value is not None:
            parts.append(_part(boundary, f"post.{identifier}.{field}", _json.encode(value)))
    return b"".join(parts)


def encode_multipart(runs: Iterable[Mapping[str, Any]], boundary: bytes) -> bytes:
    """A complete ``multipart/form-data`` body for ``runs`` (closing delimiter included)."""
    return b"".join([*(encode_run_parts(boundary, run) for run in runs), b"--", boundary, b"--\r\n"])


# --- the sink ---------------------------------------------------------------------------------------------


class _Shared:
    """What every instance on one event loop shares: the HTTP client and the gate on bodies in flight."""

    __slots__ = ("http", "in_flight")

    def __init__(self, connections: int) -> None:
        self.http = HttpClient(user_agent=_USER_AGENT, max_per_origin=connections, max_connections=512)
        self.in_flight = asyncio.Semaphore(connections)


class LangsmithSink(Sink):
    """Deliver events to one LangSmith project as ``llm`` runs over ``/runs/multipart``."""

    callback_name = "langsmith"
    Vars = LangsmithVars
    max_batch_size = 100
    send_timeout = 30.0
    callback_vars: LangsmithVars

    max_connections: ClassVar[int] = 64
    request_timeout: ClassVar[float] = 20.0
    _shared: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shared]] = weakref.WeakKeyDictionary()

    __slots__ = ("_base_url", "_project", "_headers", "_closed")

    def __init__(self, callback_vars: LangsmithVars) -> None:
        super().__init__(callback_vars)
        self._base_url = normalize_base_url(callback_vars.langsmith_base_url)
        self._project = callback_vars.langsmith_project or DEFAULT_PROJECT
        # The key in this one encoded form only.
        self._headers = encode_headers({"x-api-key": callback_vars.langsmith_api_key.get_secret_value(),
                                        "Accept": "application/json"})
        self._closed = False

    def __repr__(self) -> str:
        return f"LangsmithSink(base_url={self._base_url!r}, project={self._project!r})"

    @classmethod
    def destinations(cls, callback_vars: CallbackVars) -> list[tuple[str, str]]:
        assert isinstance(callback_vars, LangsmithVars)
        return [("langsmith_base_url", normalize_base_url(callback_vars.langsmith_base_url))]

    @classmethod
    def env_defaults(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """For ``langsmith`` named globally without variables: ``LANGSMITH_API_KEY``, ``LANGSMITH_PROJECT``,
        ``LANGSMITH_BASE_URL`` (or ``LANGSMITH_ENDPOINT``), ``LANGSMITH_SAMPLING_RATE``."""
        found: dict[str, Any] = {}
        for env, var in (("LANGSMITH_API_KEY", "langsmith_api_key"), ("LANGSMITH_PROJECT", "langsmith_project"),
                         ("LANGSMITH_SAMPLING_RATE", "langsmith_sampling_rate")):
            if environ.get(env):
                found[var] = environ[env]
        url = environ.get("LANGSMITH_BASE_URL") or environ.get("LANGSMITH_ENDPOINT")
        if url:
            found["langsmith_base_url"] = url
        return found

    @property
    def base_url(self) -> str:
        return self._base_url

    @classmethod
    def _state(cls) -> _Shared:
        loop = asyncio.get_running_loop()
        shared = LangsmithSink._shared.get(loop)
        if shared is None or shared.http.closed:
            shared = LangsmithSink._shared[loop] = _Shared(cls.max_connections)
        return shared

    @classmethod
    async def shutdown(cls) -> None:
        """Close the running loop's shared client (others are dropped: their loop owns their sockets)."""
        states, LangsmithSink._shared = LangsmithSink._shared, weakref.WeakKeyDictionary()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        shared = states.get(loop)
        if shared is not None:
            await shared.http.aclose()

    def _bodies(self, batch: Sequence[LogEvent]) -> list[tuple[bytes, bytes]]:
        """``(boundary, body)`` per request: runs grouped so each body stays under ``MAX_REQUEST_BYTES``."""
        rate = self.callback_vars.langsmith_sampling_rate
        boundary = uuid.uuid4().hex.encode()
        bodies: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []
        size = 0
        for event in batch:
            if not sampled(event, rate):
                continue
            encoded = encode_run_parts(boundary, event_to_run(event, self._project))
            if parts and size + len(encoded) > MAX_REQUEST_BYTES:
                bodies.append((boundary, b"".join([*parts, b"--", boundary, b"--\r\n"])))
                parts, size = [], 0
            parts.append(encoded)
            size += len(encoded)
        if parts:
            bodies.append((boundary, b"".join([*parts, b"--", boundary, b"--\r\n"])))
        return bodies

    async def send(self, batch: Sequence[LogEvent]) -> None:
        if not batch:
            return
        if self._closed:
            raise LangsmithDeliveryError("langsmith: sink is closed")
        shared = self._state()
        url = self._base_url + MULTIPART_PATH
        # Encode only once a slot is free: memory follows the connection limit, not the number of projects.
        async with shared.in_flight:
            for boundary, body in self._bodies(batch):
                headers = self._headers + b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
                try:
                    answer = await shared.http.post(url, body, headers=headers, timeout=self.request_timeout,
                                                    policy=self.destination_policy)
                except HttpClientError as exc:
                    raise LangsmithDeliveryError(f"langsmith: {self._base_url} unreachable ({exc.kind})") from None
                if 200 <= answer.status < 300 or answer.status == 409:
                    continue  # 409: these runs exist already (an earlier attempt of this batch); the SDK agrees
                excerpt = Scrubber.for_sink(self).excerpt(answer.body, 200)
                reason = "API key rejected" if answer.status in (401, 403) else "refused"
                raise LangsmithDeliveryError(
                    f"langsmith: {self._base_url} answered HTTP {answer.status} ({reason}): {excerpt}",
                    status_code=answer.status)

    async def health_check(self) -> HealthResult:
        """An authenticated ``GET /sessions?limit=1`` (what the SDK's ``list_projects`` calls)."""
        where = f"langsmith at {self._base_url}"
        try:
            answer = await self._state().http.request(
                "GET", f"{self._base_url}{SESSIONS_PATH}?limit=1", headers=self._headers, timeout=HEALTH_TIMEOUT,
                policy=self.destination_policy)
        except HttpClientError as exc:
            kind = "timeout" if exc.kind == "timeout" else "unreachable"
            return HealthResult(healthy=False, error_kind=kind, details=f"{where}: no answer ({exc.kind})")
        if answer.status in (401, 403):
            return HealthResult(healthy=False, error_kind="auth",
                                details=f"{where}: API key rejected (HTTP {answer.status})")
        if not 200 <= answer.status < 300:
            return HealthResult(healthy=False, error_kind="rejected", details=f"{where}: HTTP {answer.status}")
        try:
            msgspec.json.decode(answer.body, type=list)
        except msgspec.DecodeError:
            return HealthResult(healthy=False, error_kind="protocol",
                                details=f"{where}: the answer is not a list of projects (not LangSmith?)")
        return HealthResult(healthy=True, details=f"{where}: API key accepted; runs go to project "
                                                  f"{self._project!r}")

    async def aclose(self) -> None:
        # Nothing per instance to release: the connection pool is shared and closed by shutdown().
        self._closed = True
