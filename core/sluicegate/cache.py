"""The response cache: whether a request may use it, its key, and where answers are kept (in-process or Redis).

Policy, first that says anything wins: the team's ``metadata.cache`` (set through the API), the team's
``default_team_settings`` entry ``cache:``, then ``litellm_settings.cache``. A request can only narrow it, with
LiteLLM's body field ``"cache": {"no-cache": true, "no-store": true, "ttl": 60, "s-maxage": 30}``.
When the policy says off the request path does one :meth:`ResponseCache.enabled_for` call (three dict reads)
and nothing else: no key is derived, no backend is touched.

The key is a sha256 over the team, the model (the name asked for and the deployment behind it), the messages and
every other body field except those that only change the shape of the answer (``stream``, ``stream_options``),
the request's bookkeeping (``metadata``) and the cache controls themselves. One team never reads another
team's answer, because the team is part of what is hashed. Non-streamed and streamed requests share entries:
what is stored is a ``chat.completion`` body, replayed as JSON or as an SSE stream.

A backend failure is never the client's problem: lookups miss, stores are skipped, the request goes upstream.
Failures are counted and logged at most once a minute; after one, Redis is left alone for ``retry_after``
seconds so a dead server does not add a connect attempt to every request.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from sluicegate.auth import AuthContext
    from sluicegate.config import Settings
    from sluicegate.events import LogEvent
    from sluicegate.providers.models import Deployment

__all__ = ("CacheBackend", "CacheLookup", "CachedAnswer", "LocalCache", "RedisCache", "ResponseCache",
           "cache_params_problems", "parse_controls", "sse_chunks")

log = logging.getLogger("sluicegate.cache")

HIT_HEADER = "x-sluicegate-cache"
KEY_HEADER = "x-litellm-cache-key"  # LiteLLM's name, so clients written for it keep working
DEFAULT_TTL = 600.0
DEFAULT_NAMESPACE = "sluicegate"
DEFAULT_MAX_ENTRIES = 10_000
LOG_EVERY = 60.0

# Body fields that do not change the answer's content, only its framing or our bookkeeping.
_NOT_IN_KEY = frozenset({"stream", "stream_options", "metadata", "cache"})
_PARAMS = frozenset({"type", "host", "port", "password", "username", "url", "db", "ttl", "namespace", "timeout",
                     "max_entries", "retry_after"})
_CONTROLS = frozenset({"no-cache", "no-store", "ttl", "s-maxage", "namespace"})
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder()


def _flag(value: Any) -> bool | None:
    """A switch as written by an admin: a bool, or LiteLLM's string forms (``"False"``); None if not a switch."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return None


# --- configuration ------------------------------------------------------------------------------------------
class CacheParams(msgspec.Struct, kw_only=True, frozen=True):
    """``litellm_settings.cache_params``, checked."""

    type: str = "local"
    host: str | None = None
    port: int | None = None
    password: str | None = None
    username: str | None = None
    url: str | None = None
    db: int = 0
    ttl: float = DEFAULT_TTL
    namespace: str = DEFAULT_NAMESPACE
    timeout: float = 0.5
    max_entries: int = DEFAULT_MAX_ENTRIES
    retry_after: float = 1.0


_TOPOLOGIES = {"redis_startup_nodes": "Redis Cluster", "startup_nodes": "Redis Cluster",
               "service_name": "Redis Sentinel", "sentinel_nodes": "Redis Sentinel"}
"""LiteLLM's cache_params for Redis topologies Sluicegate does not speak: refused by name, never ignored (a cluster
configured here and not used would leave every process with its own cache and its own rate-limit counts)."""


def _params(raw: Mapping[str, Any] | None) -> tuple[CacheParams | None, list[str], list[str]]:
    """(params or None, problems, unknown keys). Problems name the YAML path."""
    where = "litellm_settings.cache_params"
    if raw is None:
        return CacheParams(), [], []
    if not isinstance(raw, Mapping):
        return None, [f"{where}: expected a mapping"], []
    unknown = sorted(str(k) for k in raw if k not in _PARAMS)
    known = {k: v for k, v in raw.items() if k in _PARAMS}
    try:
        params = msgspec.convert(known, CacheParams, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = message.rsplit("`$.", 1)[-1].rstrip("`") if "`$." in message else ""
        return None, [f"{where}{'.' + field if field else ''}: {message.split(' - at ')[0]}"], unknown
    problems = [f"{where}.{name}: {what} is not supported; use one Redis server (or a primary with replicas) "
                "through host/port or url" for name, what in _TOPOLOGIES.items() if name in raw]
    unknown = [name for name in unknown if name not in _TOPOLOGIES]
    if params.type not in ("local", "redis"):
        problems.append(f"{where}.type: {params.type!r} is not supported; use 'local' (in-process) or 'redis'")
    for name in ("ttl", "timeout"):
        if getattr(params, name) <= 0:
            problems.append(f"{where}.{name}: must be positive")
    if params.max_entries < 1:
        problems.append(f"{where}.max_entries: must be at least 1")
    if params.retry_after < 0:
        problems.append(f"{where}.retry_after: must not be negative")
    if not params.namespace or ":" in params.namespace:
        problems.append(f"{where}.namespace: must be a non-empty string without ':'")
    return (None if problems else params), problems, unknown


def cache_params_problems(settings: Settings) -> tuple[list[str], list[str]]:
    """Check the cache settings at load: (problems that stop start-up, warning lines)."""
    problems: list[str] = []
    litellm = settings.litellm_settings
    _, found, unknown = _params(litellm.cache_params)
    problems += found
    warnings = [f"ignoring litellm_settings.cache_params keys Sluicegate does not support: {', '.join(unknown)}"
                ] if unknown else []
    return problems, warnings


# --- backends -----------------------------------------------------------------------------------------------
class CacheBackend(abc.ABC):
    """Where cached answers live. Implementations raise on failure; :class:`ResponseCache` absorbs it."""

    name = "backend"

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The stored value, or None if absent or expired."""

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds."""

    async def aclose(self) -> None:  # noqa: B027 - optional
        """Release connections."""


class LocalCache(CacheBackend):
    """In-process: a bounded LRU with per-entry expiry. Each process has its own."""

    name = "local"
    __slots__ = ("_entries", "max_entries")

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.max_entries = max_entries

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._entries[key] = (time.monotonic() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class RedisCache(CacheBackend):
    """Redis through ``redis.asyncio``; connects on first use, never retries inside a request."""

    name = "redis"
    __slots__ = ("client",)

    def __init__(self, params: CacheParams, environ: Mapping[str, str]) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        common: dict[str, Any] = {"socket_timeout": params.timeout, "socket_connect_timeout": params.timeout,
                                  "retry": Retry(NoBackoff(), 0), "max_connections": 256}
        url = params.url or (None if params.host else environ.get("REDIS_URL"))
        if url:
            self.client = Redis.from_url(url, **common)
        else:
            port = params.port or int(environ.get("REDIS_PORT") or 6379)
            self.client = Redis(host=params.host or environ.get("REDIS_HOST") or "127.0.0.1", port=port,
                                db=params.db, username=params.username,
                                password=params.password or environ.get("REDIS_PASSWORD") or None, **common)

    async def get(self, key: str) -> bytes | None:
        return await self.client.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self.client.set(key, value, px=max(1, int(ttl * 1000)))

    async def aclose(self) -> None:
        await self.client.aclose()


# --- per request --------------------------------------------------------------------------------------------
class CachedAnswer(msgspec.Struct, frozen=True):
    content: bytes
    """The answer's body as stored (a ``chat.completion``, or an embeddings list)."""
    parsed: dict[str, Any]
    stored_at: float


def parse_controls(value: Any) -> tuple[bool, bool, float | None, float | None, str | None]:
    """LiteLLM's body field ``cache`` → (no_cache, no_store, ttl, s_maxage, namespace). 400 naming the field."""
    if not isinstance(value, dict):
        raise ApiError(400, 'cache: expected an object such as {"no-cache": true}', param="cache")
    unknown = sorted(k for k in value if k not in _CONTROLS)
    if unknown:
        raise ApiError(400, f"cache.{unknown[0]}: unknown cache control; accepted: {', '.join(sorted(_CONTROLS))}",
                       param=f"cache.{unknown[0]}")
    switches = []
    for name in ("no-cache", "no-store"):
        raw = value.get(name, False)
        flag = _flag(raw)
        if flag is None:
            raise ApiError(400, f"cache.{name}: expected a boolean", param=f"cache.{name}")
        switches.append(flag)
    seconds: list[float | None] = []
    for name in ("ttl", "s-maxage"):
        raw = value.get(name)
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0):
            raise ApiError(400, f"cache.{name}: expected a positive number of seconds", param=f"cache.{name}")
        seconds.append(float(raw) if raw is not None else None)
    namespace = value.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not namespace or ":" in namespace
                                  or len(namespace) > 128):
        raise ApiError(400, "cache.namespace: expected a non-empty string without ':' (at most 128 characters)",
                       param="cache.namespace")
    return switches[0], switches[1], seconds[0], seconds[1], namespace


class CacheLookup:
    """One request's view of the cache: its key and what it may do."""

    __slots__ = ("cache", "key", "digest", "no_cache", "no_store", "ttl", "s_maxage")

    def __init__(self, cache: ResponseCache, digest: str, namespace: str, controls: Any) -> None:
        self.cache = cache
        self.digest = digest
        self.no_cache = self.no_store = False
        self.ttl: float | None = None
        self.s_maxage: float | None = None
        if controls is not None:
            self.no_cache, self.no_store, self.ttl, self.s_maxage, override = parse_controls(controls)
            namespace = override or namespace
        self.key = f"{namespace}:{digest}"

    async def get(self) -> CachedAnswer | None:
        if self.no_cache:
            return None
        answer = await self.cache.fetch(self.key)
        if answer is not None and self.s_maxage is not None and time.time() - answer.stored_at > self.s_maxage:
            return None
        return answer

    async def put(self, content: bytes, parsed: Any) -> None:
        """Store a successful answer: a ``chat.completion`` (``choices``) or a list such as embeddings'
        (``data``); anything else is not stored."""
        if not self.no_store and _storable(parsed):
            await self.cache.store(self.key, content, self.ttl)

    async def put_completion(self, completion: dict[str, Any]) -> None:
        if not self.no_store:
            await self.cache.store(self.key, msgspec.json.encode(completion), self.ttl)

    def mark(self, event: LogEvent, *, hit: bool) -> None:
        """Record the cache's part in the request's log event: a hit is free."""
        event.cache_key = self.digest
        event.cache_hit = hit
        if hit:
            event.saved_cache_cost = event.response_cost
            event.response_cost = 0.0

    def headers(self, *, hit: bool) -> dict[str, str]:
        return {HIT_HEADER: "hit", KEY_HEADER: self.digest} if hit else {HIT_HEADER: "miss"}


# --- the cache ----------------------------------------------------------------------------------------------
class ResponseCache:
    """Policy, key derivation and one backend, with counters. Built once per gateway."""

    __slots__ = ("params", "backend", "_global", "_teams", "hits", "misses", "stores", "errors", "bypassed",
                 "_down_until", "_logged_at", "_unlogged", "_last_error", "_environ")

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        litellm = settings.litellm_settings
        params, problems, _ = _params(litellm.cache_params)
        if params is None:
            from sluicegate.config import ConfigError

            raise ConfigError(problems)
        self.params = params
        self._global = bool(litellm.cache)
        self._teams = {t.team_id: t.cache for t in litellm.default_team_settings if t.cache is not None}
        self._environ = environ if environ is not None else os.environ
        self.backend: CacheBackend | None = None
        self.hits = self.misses = self.stores = self.errors = self.bypassed = 0
        self._down_until = 0.0
        self._logged_at = -LOG_EVERY
        self._unlogged = 0
        self._last_error = ""

    @property
    def configured(self) -> bool:
        """Whether any layer of configuration can switch caching on (team metadata can at run time)."""
        return self._global or any(self._teams.values())

    def enabled_for(self, ctx: AuthContext) -> bool:
        """The effective policy for this caller. Cheap: runs on every request."""
        team = ctx.team
        if team is not None and "cache" in team.metadata:
            flag = _flag(team.metadata["cache"])
            if flag is not None:
                return flag
        key = ctx.key
        if key is not None and key.team_id is not None:
            configured = self._teams.get(key.team_id)
            if configured is not None:
                return configured
        return self._global

    def lookup(self, ctx: AuthContext, deployment: Deployment, body: Mapping[str, Any],
               controls: Any = None, *, kind: str = "chat/completions") -> CacheLookup:
        """Derive the key for a request whose policy is on. Raises 400 for malformed ``cache`` controls."""
        return CacheLookup(self, self.key_for(ctx.team_id, deployment, body, kind), self.params.namespace, controls)

    @staticmethod
    def key_for(team_id: str | None, deployment: Deployment, body: Mapping[str, Any],
                kind: str = "chat/completions") -> str:
        """sha256 hex over the team, the model, the endpoint (``kind``) and every answer-changing field of the
        body (for embeddings: the input however given, ``encoding_format``, ``dimensions``)."""
        material = {k: v for k, v in body.items() if k not in _NOT_IN_KEY}
        material["model"] = [deployment.model_name, deployment.upstream_model, deployment.api_base]
        material["\x00team"] = team_id
        if kind != "chat/completions":  # chat's keys stay what they were
            material["\x00endpoint"] = kind
        try:
            encoded = _encoder.encode(material)
        except (TypeError, msgspec.EncodeError):  # a body msgspec cannot order: fall back on repr
            encoded = repr(sorted(material.items(), key=lambda kv: kv[0])).encode()
        return hashlib.sha256(encoded).hexdigest()

    def _get_backend(self) -> CacheBackend:
        if self.backend is None:
            self.backend = (RedisCache(self.params, self._environ) if self.params.type == "redis"
                            else LocalCache(self.params.max_entries))
        return self.backend

    async def fetch(self, key: str) -> CachedAnswer | None:
        if self._down_until and time.monotonic() < self._down_until:
            self.bypassed += 1
            self.misses += 1
            return None
        try:
            raw = await self._get_backend().get(key)
        except Exception as exc:
            self._failed("lookup", exc)
            self.misses += 1
            return None
        self._down_until = 0.0
        answer = _unpack(raw) if raw is not None else None
        if answer is None:
            self.misses += 1
            return None
        self.hits += 1
        return answer

    async def store(self, key: str, content: bytes, ttl: float | None = None) -> None:
        if self._down_until and time.monotonic() < self._down_until:
            self.bypassed += 1
            return
        try:
            await self._get_backend().set(key, f"{time.time():.3f}\n".encode() + content, ttl or self.params.ttl)
        except Exception as exc:
            self._failed("store", exc)
            return
        self.stores += 1

    def _failed(self, what: str, exc: BaseException) -> None:
        """Count a backend failure; log the first, then at most one summary line a minute."""
        self.errors += 1
        self._unlogged += 1
        self._last_error = f"{what}: {type(exc).__name__}"
        now = time.monotonic()
        self._down_until = now + self.params.retry_after
        if now - self._logged_at >= LOG_EVERY:
            log.warning("response cache (%s) unavailable: %d failure(s) since the last report, last %s; "
                        "requests go to the upstream uncached", self.params.type, self._unlogged, self._last_error)
            self._logged_at = now
            self._unlogged = 0

    def stats(self) -> dict[str, Any]:
        return {"type": self.params.type, "enabled_globally": self._global, "hits": self.hits,
                "misses": self.misses, "stores": self.stores, "errors": self.errors, "bypassed": self.bypassed,
                "last_error": self._last_error or None}

    async def aclose(self) -> None:
        if self.backend is not None:
            try:
                await asyncio.wait_for(self.backend.aclose(), 5)
            except Exception as exc:  # closing a dead connection must not break shutdown
                log.debug("response cache close failed: %s", type(exc).__name__)


def _unpack(raw: bytes) -> CachedAnswer | None:
    stamp, sep, content = raw.partition(b"\n")
    if not sep:
        return None
    try:
        parsed = _decoder.decode(content)
        stored_at = float(stamp)
    except (msgspec.DecodeError, ValueError):
        return None
    if not _storable(parsed):
        return None
    return CachedAnswer(content, parsed, stored_at)


def _storable(parsed: Any) -> bool:
    return isinstance(parsed, dict) and (isinstance(parsed.get("choices"), list)
                                         or isinstance(parsed.get("data"), list))


# --- replay as SSE ------------------------------------------------------------------------------------------
def sse_chunks(completion: Mapping[str, Any], *, include_usage: bool) -> list[bytes]:
    """A stored ``chat.completion`` as the SSE frames an upstream would have sent, ending in ``[DONE]``."""
    base = {"id": completion.get("id"), "object": "chat.completion.chunk", "created": completion.get("created"),
            "model": completion.get("model")}
    frames: list[bytes] = []

    def frame(choices: list[dict[str, Any]], **extra: Any) -> None:
        frames.append(b"data: " + msgspec.json.encode({**base, "choices": choices, **extra}) + b"\n\n")

    for choice in completion.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        frame([{"index": index, "delta": {"role": message.get("role") or "assistant", "content": ""},
                "finish_reason": None}])
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            frame([{"index": index, "delta": {"reasoning_content": reasoning}, "finish_reason": None}])
        if isinstance(message.get("content"), str) and message["content"]:
            frame([{"index": index, "delta": {"content": message["content"]}, "finish_reason": None}])
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            frame([{"index": index, "finish_reason": None, "delta": {"tool_calls": [
                {"index": i, **call} for i, call in enumerate(calls) if isinstance(call, dict)]}}])
        frame([{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}])
    usage = completion.get("usage")
    if include_usage and isinstance(usage, dict):
        frame([], usage=usage)
    frames.append(b"data: [DONE]\n\n")
    return frames
