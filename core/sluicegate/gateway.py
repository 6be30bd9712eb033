"""The gateway's state for one app: settings, store, caches, plugins, routes and delivery.

Built by ``create_app``; started and stopped by the Litestar plugin's lifespan.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
from typing import TYPE_CHECKING

from sluicegate import __version__
from sluicegate.aio import cancel_and_wait
from sluicegate.auth import AuthContext, KeyCache, bearer_token, check_usable, hash_key, is_master
from sluicegate.cache import ResponseCache
from sluicegate.db.store import Store
from sluicegate.errors import ApiError
from sluicegate.limits.ratelimit import RateLimiter
from sluicegate.plugins import get_plugin_manager
from sluicegate.net.http import HttpClient
from sluicegate.providers.base import ProviderClients
from sluicegate.providers.models import ModelRouter
from sluicegate.providers.registry import ProviderRegistry
from sluicegate.router import Router
from sluicegate.providers.upstream import MAX_UPSTREAM_ANSWER_BYTES, BuiltinUpstream, UpstreamClient, make_upstream
from sluicegate.routing import LoggingResolver
from sluicegate.sinks.dispatcher import Dispatcher, spool_dir_for
from sluicegate.sinks.registry import SinkRegistry
from sluicegate.throttle import Throttle

if TYPE_CHECKING:
    from collections.abc import Mapping

    from litestar import Request

    from sluicegate.config import Settings
    from sluicegate.sinks.base import HealthCheck

__all__ = ("Gateway",)

log = logging.getLogger("sluicegate")


def _return_free_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc's ``malloc_trim``; elsewhere nothing to do).

    Parsing a large ``config.yaml`` (10,000 teams) frees tens of MB that glibc would otherwise keep mapped for the
    life of the process (bench: ~20 MB of RSS at 10,000 teams).
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return
    trim(0)


NO_MASTER_KEY = ("no master key is configured (general_settings.master_key), so admin routes are closed to "
                 "everyone")


class Gateway:
    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None,
                 http_client: str = "builtin", tune_gc: bool = False) -> None:
        self.settings = settings
        self.pm = get_plugin_manager(environ)
        self.registry = SinkRegistry.from_plugin_manager(self.pm)
        self.resolver = LoggingResolver(settings, self.registry, self.pm)
        self.providers = ProviderRegistry.from_plugin_manager(self.pm)
        self.models = ModelRouter.from_settings(settings, self.providers, environ)
        self.router = Router(self.models, settings)
        self.store = Store.for_settings(settings, environ)  # the salt key for stored secrets comes with it
        self.keys = KeyCache()
        self.key_health_throttle = Throttle(settings.sluicegate_settings.key_health_per_minute, 60.0)
        self.dispatcher = Dispatcher(settings.sluicegate_settings.delivery, spool_dir=spool_dir_for(settings))
        self.dispatcher.pool.api_policy = self.resolver.api_policy  # API-written callbacks' destinations
        self.cache = ResponseCache(settings, environ)  # no connection until a request uses it
        self.limits = RateLimiter(settings)  # rpm/tpm/parallel limits: in process, or in Redis when configured
        self.master_key = settings.general_settings.master_key
        self.http_client_kind = http_client
        self.tune_gc = tune_gc
        self.upstream: UpstreamClient | None = None
        self._provider_http: HttpClient | None = None
        self.health_checks: dict[str, HealthCheck] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._version = -1
        self._generation = 0
        self.admin = AuthContext(token_id="master", is_admin=True, callbacks=self.resolver.global_set)
        for impl in self.pm.hook.register_health_checks.get_hookimpls():
            impl.function(register=self._register_health_check)

    def _register_health_check(self, name: str, check: HealthCheck) -> None:
        if name in self.health_checks:
            raise RuntimeError(f"health check {name!r} registered twice")
        self.health_checks[name] = check

    # lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.migrate()
        self._version = await self.store.version()
        self.upstream = make_upstream(self.http_client_kind)
        if isinstance(self.upstream, BuiltinUpstream):
            http = self.upstream.client  # one pool for every provider
        else:  # bench's alternative upstream clients serve the OpenAI-compatible providers only
            http = self._provider_http = HttpClient(user_agent=f"sluicegate/{__version__}", max_per_origin=1000,
                                                    max_connections=1000,
                                                    max_response_bytes=MAX_UPSTREAM_ANSWER_BYTES)
        clients = ProviderClients(http=http, upstream=self.upstream)
        await self.models.start(clients)
        await self.router.start(clients)
        await self.dispatcher.start(self.registry.get)
        await self.limits.start()
        self._watcher = asyncio.get_running_loop().create_task(self._watch_changes())
        if self.tune_gc:
            # Everything built so far (plugins, config, caches' scaffolding) lives as long as the process: keep
            # it out of the cyclic collector's passes and make full passes rarer, so one over a large heap does
            # not stall the loop (bench: p99 at c=1 with 1,000 teams logging 160 ms -> 19 ms). Server processes
            # only (`sluicegate serve`): it is process-wide state, not something an embedding app should inherit.
            gc.collect()
            gc.freeze()
            gc.set_threshold(10_000, 50, 100)
            _return_free_heap()

    async def stop(self) -> None:
        if self._watcher is not None:
            # Awaited, not only cancelled: a poll cut short releases its database connection on the way out, and
            # that must happen before the store closes (a cleanup left for later waited for ever on the closed
            # driver's thread and hung the event loop's own shutdown).
            await cancel_and_wait(self._watcher, "change watcher", grace=5.0)
            self._watcher = None
        await self.dispatcher.aclose()
        await self.cache.aclose()
        await self.limits.aclose()
        await self.router.aclose()
        await self.models.aclose()
        if self.upstream is not None:
            await self.upstream.aclose()
        if self._provider_http is not None:
            await self._provider_http.aclose()
        await self.store.aclose()

    async def _watch_changes(self) -> None:
        """Poll the change counter so writes by other processes reach this one within one interval."""
        interval = self.settings.sluicegate_settings.change_poll_interval
        while True:
            await asyncio.sleep(interval)
            try:
                version = await self.store.version()
            except Exception as exc:  # the database may blip; keep serving from cache
                log.warning("change poll failed: %s", type(exc).__name__)
                continue
            if version != self._version:
                self._version = version
                self.invalidate()

    def invalidate(self) -> None:
        """Drop every cached key context (and with it every resolved route set)."""
        self._generation += 1
        self.keys.clear()

    # auth ---------------------------------------------------------------------------------------------
    async def authenticate(self, request: Request) -> AuthContext:
        headers = request.headers
        token = bearer_token(headers.get("authorization"), headers.get("x-api-key") or headers.get("api-key"))
        if is_master(token, self.master_key):
            return self.admin
        token_id = hash_key(token)
        ctx = self.keys.get(token_id)
        if ctx is None:
            if not token.startswith("sk-") or self.keys.is_unknown(token_id):
                raise ApiError(401, "invalid API key", type="authentication_error", code="401")
            ctx = await self._load(token_id)
        assert ctx.key is not None
        check_usable(ctx.key)
        return ctx

    async def _load(self, token_id: str) -> AuthContext:
        generation = self._generation
        record = await self.store.get_key(token_id)
        if record is None:
            if generation == self._generation:
                self.keys.put_unknown(token_id)
            raise ApiError(401, "invalid API key", type="authentication_error", code="401")
        team = await self.store.get_team(record.team_id) if record.team_id else None
        if record.team_id and team is None:
            # Its team was deleted (deletion takes the team's keys along; this covers a key written meanwhile, or
            # by hand): never resolve such a key to the global layer, where a team's opt-out would be lost.
            raise ApiError(401, f"this key's team {record.team_id!r} no longer exists", type="authentication_error",
                           code="401")
        ctx = AuthContext(token_id=token_id, is_admin=False, key=record, team=team,
                          callbacks=self.resolver.for_key(record, team))
        if generation == self._generation:  # a change landed meanwhile: do not cache what may be stale
            self.keys.put(ctx)
        return ctx

    async def admin_only(self, request: Request) -> AuthContext:
        try:
            ctx = await self.authenticate(request)
        except ApiError as exc:
            if self.master_key is None:
                raise ApiError(exc.status, f"{exc.message}; {NO_MASTER_KEY}", type=exc.type, code=exc.code) from None
            raise
        if not ctx.is_admin:
            raise ApiError(403, "this route needs the master key" + (f"; {NO_MASTER_KEY}" if self.master_key is None
                                                                       else ""), type="permission_error", code="403")
        return ctx
