"""The gateway's state for one app: settings, store, caches, plugins, routes and delivery.

Built by ``create_app``; started and stopped by the Litestar plugin's lifespan.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from sluicegate import __version__
from sluicegate.aio import cancel_and_wait
from sluicegate.auth import AuthContext, KeyCache, bearer_token, check_usable, hash_key, is_master
from sluicegate.cache import ResponseCache
from sluicegate.config import ConfigError, load_settings, per_worker, restart_needed
from sluicegate.db.store import Store, mask_all_vars
from sluicegate.errors import ApiError
from sluicegate.permissions import require
from sluicegate.limits.shared import SharedSpend, redis_settings_of
from sluicegate.limits.budgets import duration_seconds
from sluicegate.limits.spend import SpendLedger
from sluicegate.limits.ratelimit import RateLimiter
from sluicegate.plugins import get_plugin_manager
from sluicegate.net.http import HttpClient
from sluicegate.providers.base import ProviderClients
from sluicegate.providers.models import ModelRouter
from sluicegate.providers.registry import ProviderRegistry
from sluicegate.metrics import RequestMetrics
from sluicegate.worker_metrics import WorkerMetrics
from sluicegate.router import Router
from sluicegate.providers.upstream import MAX_UPSTREAM_ANSWER_BYTES, BuiltinUpstream, UpstreamClient, make_upstream
from sluicegate.routing import LoggingResolver
from sluicegate.delivery.status import query, status_address
from sluicegate.delivery.worker_log import WorkerLog
from sluicegate.sinks.dispatcher import Dispatcher, spool_base_for, spool_dir_for
from sluicegate.sinks.registry import SinkRegistry
from sluicegate.throttle import Throttle

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from litestar import Request

    from sluicegate.config import Settings
    from sluicegate.events import LogEvent
    from sluicegate.permissions import Level
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


class ReloadResult(msgspec.Struct, kw_only=True):
    """What a reload swapped in: counts, and the changed settings that only a restart applies."""

    models: int
    teams: int
    restart_needed: list[str]


NO_MASTER_KEY = ("no master key is configured (general_settings.master_key), so admin routes are closed to "
                 "everyone")


class Gateway:
    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None,
                 http_client: str = "builtin", tune_gc: bool = False, workers: int = 1,
                 allow_unknown_keys: bool = False, delivery: str = "inline") -> None:
        if delivery not in ("inline", "process"):
            raise ValueError(f"delivery must be 'inline' or 'process', not {delivery!r}")
        self.settings = settings
        self.delivery_mode = delivery
        self.workers = workers  # reloads divide the gateway-wide budgets as start-up did (config.per_worker)
        self.allow_unknown_keys = allow_unknown_keys
        self.reloads = 0
        self.migrate_on_start = True  # False: the process that started this one has just migrated the database
        self.environ = environ
        self.pm = get_plugin_manager(environ)
        self.registry = SinkRegistry.from_plugin_manager(self.pm)
        self.resolver = LoggingResolver(settings, self.registry, self.pm)
        self.providers = ProviderRegistry.from_plugin_manager(self.pm)
        self.models = ModelRouter.from_settings(settings, self.providers, environ)
        self.router = Router(self.models, settings)
        self.store = Store.for_settings(settings, environ)  # the salt key for stored secrets comes with it
        self.store.mask_entry = self._audit_mask  # the audit trail masks secrets as the API shows them
        self.keys = KeyCache()
        self.key_health_throttle = Throttle(settings.sluicegate_settings.key_health_per_minute, 60.0)
        self.delivery_address: str | None = None
        self.dispatcher: Dispatcher | WorkerLog
        if delivery == "process":
            # A serving worker of `sluicegate serve`: events go to its log, the delivery process delivers them.
            base = spool_base_for(settings)
            self.dispatcher = WorkerLog(settings.sluicegate_settings.delivery, base)
            self.dispatcher.probes.api_policy = self.resolver.api_policy
            self.delivery_address = status_address(base)
        else:
            self.dispatcher = Dispatcher(settings.sluicegate_settings.delivery, spool_dir=spool_dir_for(settings))
            self.dispatcher.pool.api_policy = self.resolver.api_policy  # API-written callbacks' destinations
        metrics = settings.sluicegate_settings.metrics
        self.metrics = RequestMetrics(metrics.labels, metrics.max_series, metrics.histogram_labels)
        self.cache = ResponseCache(settings, environ)  # no connection until a request uses it
        redis = redis_settings_of(settings)
        self.spend = SpendLedger(self.store, settings, shared=SharedSpend(redis) if redis is not None else None)
        self.limits = RateLimiter(settings)  # rpm/tpm/parallel limits: in process, or in Redis when configured
        self.metrics.gauge_sources += [self.spend.gauges, self.limits.gauges]  # read at scrape time only
        # Several server processes: each publishes its series, the one scraped merges them all (one /metrics).
        self.worker_metrics = (WorkerMetrics(self.metrics, Path(spool_base_for(settings)) / "metrics",
                                             refresh=self.limits.refresh_gauges) if workers > 1 else None)
        self.master_key = settings.general_settings.master_key
        self.http_client_kind = http_client
        self.tune_gc = tune_gc
        self.upstream: UpstreamClient | None = None
        self._provider_http: HttpClient | None = None
        self.health_checks: dict[str, HealthCheck] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._clients: ProviderClients | None = None
        self._reload_lock = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()  # old models and routers closing once their requests end
        self._version = -1
        self._generation = 0
        self.admin = AuthContext(token_id="master", is_admin=True, callbacks=self.resolver.global_set)
        for impl in self.pm.hook.register_health_checks.get_hookimpls():
            impl.function(register=self._register_health_check)

    def _audit_mask(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """A logging entry as the audit trail keeps it: the API's masking (each sink's secret fields), and every
        value masked for a sink that is not installed (nothing says which of its variables are secret)."""
        if entry.get("callback_name") not in self.registry:
            return mask_all_vars(entry)
        return self.resolver.mask(entry)

    def _register_health_check(self, name: str, check: HealthCheck) -> None:
        if name in self.health_checks:
            raise RuntimeError(f"health check {name!r} registered twice")
        self.health_checks[name] = check

    # lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.migrate_on_start:
            await self.store.migrate()
        self._version = await self.store.version()
        self.upstream = make_upstream(self.http_client_kind)
        if isinstance(self.upstream, BuiltinUpstream):
            http = self.upstream.client  # one pool for every provider
        else:  # bench's alternative upstream clients serve the OpenAI-compatible providers only
            http = self._provider_http = HttpClient(user_agent=f"sluicegate/{__version__}", max_per_origin=1000,
                                                    max_connections=1000,
                                                    max_response_bytes=MAX_UPSTREAM_ANSWER_BYTES)
        clients = self._clients = ProviderClients(http=http, upstream=self.upstream)
        await self.models.start(clients)
        await self.router.start(clients)
        await self.dispatcher.start(self.registry.get, self.resolver.redaction.compile)
        await self.spend.start()
        await self.limits.start()
        if self.worker_metrics is not None:
            await self.worker_metrics.start()
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
        for task in list(self._retired):  # shutting down: close what a reload retired now, not after its grace
            await cancel_and_wait(task, "retired configuration", grace=5.0)
        await self.spend.aclose()  # before the store closes: the last spend is written
        if self.worker_metrics is not None:  # the last snapshot: this worker's counts outlive it
            await self.worker_metrics.aclose()
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

    # live reload --------------------------------------------------------------------------------------
    async def reload(self, settings: Settings | None = None) -> ReloadResult:
        """Re-read config.yaml (or take ``settings``), validate it fully, then swap models, router, routes, team
        settings and the master key in one step. Requests already past authentication finish on the objects they
        hold (the old deployments and routes); the next ones resolve against the new configuration. A bad file
        raises :class:`~sluicegate.config.ConfigError` and changes nothing."""
        async with self._reload_lock:
            if settings is None:
                source = self.settings.source
                if not source:
                    raise ConfigError(["this gateway was not started from a config file: nothing to reload"])
                loaded = await asyncio.to_thread(load_settings, source, allow_unknown_keys=self.allow_unknown_keys)
                settings = per_worker(loaded, self.workers) if self.delivery_mode == "inline" else loaded
            resolver = LoggingResolver(settings, self.registry, self.pm)  # every check of the startup path
            models = ModelRouter.from_settings(settings, self.providers, self.environ)
            router = Router(models, settings)
            restart = restart_needed(self.settings, settings)
            clients = self._clients
            if clients is not None:
                try:
                    await models.start(clients)
                    await router.start(clients)
                except BaseException:
                    await router.aclose()
                    await models.aclose()
                    raise
            old_models, old_router = self.models, self.router
            # the swap: no await between these lines, so no request sees half of it
            self.settings = settings
            self.resolver = resolver
            self.models = models
            self.router = router
            self.master_key = settings.general_settings.master_key
            self.admin = AuthContext(token_id="master", is_admin=True, callbacks=resolver.global_set)
            if isinstance(self.dispatcher, WorkerLog):
                self.dispatcher.probes.api_policy = resolver.api_policy
            else:
                self.dispatcher.pool.api_policy = resolver.api_policy
            self.spend.proxy_max_budget = settings.litellm_settings.max_budget  # the proxy-wide budget
            self.spend.proxy_seconds = duration_seconds(settings.litellm_settings.budget_duration)
            self.invalidate()
            self.reloads += 1
            if clients is not None:
                grace = max((d.timeout for d in old_models.all), default=0.0) + 5.0
                task = asyncio.get_running_loop().create_task(self._retire(old_models, old_router, min(grace, 900)))
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
            return ReloadResult(models=len(models.all), teams=len(settings.litellm_settings.default_team_settings),
                                restart_needed=restart)

    async def _retire(self, models: ModelRouter, router: Router, grace: float) -> None:
        """Close a replaced configuration's providers once no request can still be using them (the longest
        upstream timeout it had), or at shutdown."""
        try:
            await asyncio.sleep(grace)
        finally:
            await router.aclose()
            await models.aclose()

    def invalidate(self) -> None:
        """Drop every cached key context (and with it every resolved route set)."""
        self._generation += 1
        self.keys.clear()
        self.spend.invalidate()

    # delivery -----------------------------------------------------------------------------------------
    async def delivery_stats(self) -> dict[str, Any]:
        """``/-/sinks``: every sink instance's counters, from this process (inline) or the delivery process."""
        dispatcher = self.dispatcher
        if self.delivery_address is None:
            stats = dispatcher.stats()
            return {"sinks": stats, "submitted": dispatcher.submitted, "pending": dispatcher.pending(),
                    "instances": len(stats), "redaction_runs": dispatcher.redaction_memo.applied}
        answer = await query(self.delivery_address, "stats")
        worker = {"submitted": dispatcher.submitted, "unwritten": dispatcher.pending()}
        if answer is None:
            return {"sinks": [], "submitted": 0, "pending": dispatcher.pending(), "instances": 0,
                    "delivery": {"healthy": False, "details": "the delivery process does not answer"},
                    "worker": worker}
        answer["pending"] = int(answer.get("pending") or 0) + dispatcher.pending()
        answer["worker"] = worker
        return answer

    async def delivery_health(self) -> dict[str, Any] | None:
        """The delivery process's health for ``/health/readiness`` (None inline: delivery is this process's)."""
        if self.delivery_address is None:
            return None
        answer = await query(self.delivery_address, "ping", timeout=1.0)
        if answer is None:
            return {"healthy": False, "details": "the delivery process does not answer (restarting?); events wait "
                                                 "in the workers' logs"}
        return {"healthy": True, "details": {k: answer.get(k) for k in ("pid", "uptime", "restarts", "instances",
                                                                        "workers")}}

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
        user, team_roles = None, {}
        if record.user_id:
            user = await self.store.get_user(record.user_id)
            if user is None:  # deleted with its keys; this covers a key written meanwhile, or by hand
                raise ApiError(401, f"this key's user {record.user_id!r} no longer exists",
                               type="authentication_error", code="401")
            team_roles = {m.team_id: m.role for m in await self.store.memberships(user_id=user.user_id)}
        ctx = AuthContext(token_id=token_id, is_admin=user is not None and user.user_role == "proxy_admin",
                          key=record, team=team, callbacks=self.resolver.for_key(record, team), user=user,
                          team_roles=team_roles)
        if generation == self._generation:  # a change landed meanwhile: do not cache what may be stale
            self.keys.put(ctx)
        return ctx

    def record(self, event: LogEvent, ctx: AuthContext) -> int:
        """The end of every call: count ``event`` in the request metrics and its cost in the spend ledger (memory
        only), then hand it to delivery (never awaits). Returns the number of routes it was queued for."""
        self.metrics.observe(event)
        self.spend.record(event, ctx)
        return self.dispatcher.submit(event, ctx.callbacks)

    async def admin_only(self, request: Request) -> AuthContext:
        """Authenticate and require ``proxy_admin``."""
        return await self.authorize(request, "proxy_admin")

    async def authorize(self, request: Request, level: Level = "any_key", team_id: str | None = None) -> AuthContext:
        """Authenticate the request and require ``level`` (for ``team_id`` where the level is a team's): see
        :mod:`sluicegate.permissions`. Routes whose team is known only after reading a body or a key authorize
        with ``any_key`` here and call :func:`sluicegate.permissions.require` once they know it."""
        try:
            ctx = await self.authenticate(request)
        except ApiError as exc:
            if self.master_key is None:
                raise ApiError(exc.status, f"{exc.message}; {NO_MASTER_KEY}", type=exc.type, code=exc.code) from None
            raise
        try:
            require(ctx, level, team_id)
        except ApiError as exc:
            if self.master_key is None and not ctx.is_admin:
                raise ApiError(exc.status, f"{exc.message}; {NO_MASTER_KEY}", type=exc.type, param=exc.param,
                               code=exc.code) from None
            raise
        return ctx
