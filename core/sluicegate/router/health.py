"""Deployment health: a minimal call to each deployment, reported in LiteLLM's ``/health`` shape.

``GET /health`` (admin) probes every deployment concurrently (``max_tokens: 1``, each within its timeout). With
``general_settings.background_health_checks: true`` a task probes every ``health_check_interval`` seconds instead,
``/health`` serves that cached view, and the router skips the deployments it found unhealthy (unless every
deployment of a group is). Probes go to the provider directly: they are not logged, cost no cooldown and leave no
latency sample. What a probe's failure says is scrubbed of the deployment's secrets before anyone sees it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from sluicegate.config import model_name_matches
from sluicegate.errors import ApiError
from sluicegate.providers.models import SECRET_PARAM_WORDS, for_wildcard
from sluicegate.router.errors import error_class
from sluicegate.sinks.scrub import Scrubber, error_kind_of

if TYPE_CHECKING:
    from sluicegate.config import GeneralSettings
    from sluicegate.providers.models import Deployment
    from sluicegate.router.core import Router

__all__ = ("DEFAULT_HEALTH_CHECK_TIMEOUT", "HEALTH_CHECK_CONCURRENCY", "HealthChecker")

log = logging.getLogger("sluicegate.router")

DEFAULT_HEALTH_CHECK_TIMEOUT = 60.0
"""Seconds a probe may take (LiteLLM's ``HEALTH_CHECK_TIMEOUT_SECONDS``); ``model_info.health_check_timeout`` or a
shorter ``timeout`` of the deployment wins."""
HEALTH_CHECK_CONCURRENCY = 32
"""Probes in flight at once: a long model list is checked in waves, not with one connection per deployment."""
PROBE_MESSAGES = [{"role": "user", "content": "ping"}]


def _secrets(deployment: Deployment) -> list[str]:
    """Every credential the deployment sends: its key, secret-looking provider params, its extra headers."""
    found = [deployment.api_key] if deployment.api_key else []
    params = deployment.provider_params
    for name in getattr(params, "__struct_fields__", ()):
        value = getattr(params, name, None)
        if isinstance(value, str) and any(word in name.lower() for word in SECRET_PARAM_WORDS):
            found.append(value)
    found += [v for v in (deployment.extra_headers or {}).values() if isinstance(v, str)]
    return found


def _endpoint(deployment: Deployment, scrub: Scrubber) -> dict[str, Any]:
    return {"model": f"{deployment.custom_llm_provider}/{deployment.upstream_model}",
            "model_name": deployment.model_name, "model_id": deployment.model_id,
            "api_base": scrub.line(deployment.api_base) if deployment.api_base else None,
            "custom_llm_provider": deployment.custom_llm_provider}


class HealthChecker:
    """Probes a router's deployments; in background mode keeps the latest report and the router's unhealthy set."""

    def __init__(self, router: Router, settings: GeneralSettings) -> None:
        self.router = router
        self.background = settings.background_health_checks
        self.interval = settings.health_check_interval
        self.latest: dict[str, Any] | None = None
        """The last background report (LiteLLM's shape plus ``checked_at``); None until the first one."""
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None

    # lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.background and self._task is None:
            loop = asyncio.get_running_loop()
            self._first = loop.create_future()
            self._task = loop.create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # cancelled: that is how it ends
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # never let one bad round end the checks
                log.warning("background health check failed: %s", type(exc).__name__)
            if self._first is not None and not self._first.done():
                self._first.set_result(None)
            await asyncio.sleep(self.interval)  # the checking period, not synchronisation

    async def refresh(self) -> dict[str, Any]:
        """Probe every deployment now; keep the report and mark the unhealthy ones for the router."""
        report = await self.check(self.router.models.all)
        self.latest = report
        self.router.unhealthy = frozenset(e["model_id"] for e in report["unhealthy_endpoints"])
        return report

    # reports ------------------------------------------------------------------------------------------
    async def report(self, model: str | None = None, model_id: str | None = None) -> dict[str, Any]:
        """What ``GET /health`` answers: the background view when on (waiting for its first round), else fresh
        probes; only the deployments of ``model`` (a group, or a ``provider/model``) or ``model_id`` when given."""
        chosen = self._select(model, model_id)
        if not self.background:
            return await self.check(chosen)
        if self.latest is None and self._first is not None:
            await asyncio.shield(self._first)
        latest = self.latest or await self.refresh()
        if model is None and model_id is None:
            return latest
        ids = {d.model_id for d in chosen}
        healthy = [e for e in latest["healthy_endpoints"] if e["model_id"] in ids]
        unhealthy = [e for e in latest["unhealthy_endpoints"] if e["model_id"] in ids]
        return {"healthy_endpoints": healthy, "unhealthy_endpoints": unhealthy, "healthy_count": len(healthy),
                "unhealthy_count": len(unhealthy), "checked_at": latest["checked_at"]}

    def _select(self, model: str | None, model_id: str | None) -> list[Deployment]:
        chosen = self.router.models.all
        if model_id is not None:
            chosen = [d for d in chosen if d.model_id == model_id]
            if not chosen:
                raise ApiError(400, f"model_id: no deployment has the id {model_id!r}", param="model_id",
                               code="model_not_found")
        if model is not None:
            chosen = [d for d in chosen if model in (d.model_name, f"{d.custom_llm_provider}/{d.upstream_model}")]
            if not chosen:
                raise ApiError(400, f"model: {model!r} is not a configured model group", param="model",
                               code="model_not_found")
        return chosen

    async def check(self, deployments: list[Deployment]) -> dict[str, Any]:
        """Probe ``deployments`` concurrently (at most :data:`HEALTH_CHECK_CONCURRENCY` at once)."""
        gate = asyncio.Semaphore(HEALTH_CHECK_CONCURRENCY)

        async def gated(deployment: Deployment) -> tuple[bool, dict[str, Any]] | None:
            async with gate:
                return await self.probe(deployment)

        results = await asyncio.gather(*(gated(d) for d in deployments))
        healthy = [entry for ok, entry in filter(None, results) if ok]
        unhealthy = [entry for ok, entry in filter(None, results) if not ok]
        return {"healthy_endpoints": healthy, "unhealthy_endpoints": unhealthy, "healthy_count": len(healthy),
                "unhealthy_count": len(unhealthy), "checked_at": self.router.clock()}

    async def probe(self, deployment: Deployment) -> tuple[bool, dict[str, Any]] | None:
        """One minimal call: ``(healthy, endpoint entry)``; None for a wildcard deployment without
        ``model_info.health_check_model`` (there is no model to ask)."""
        info = deployment.model_info or {}
        if deployment.mock_response is not None:  # answers offline: nothing to reach
            return True, _endpoint(deployment, Scrubber(()))
        target, started = deployment, False
        if "*" in deployment.model_name:
            name = info.get("health_check_model")
            if not isinstance(name, str):
                return None
            matched = model_name_matches(deployment.model_name, name)
            if matched is None:
                return False, {**_endpoint(deployment, Scrubber(_secrets(deployment))),
                               "error": f"model_info.health_check_model {name!r} does not match the model_name "
                                        f"{deployment.model_name!r}", "error_kind": "rejected",
                               "error_class": "BadRequestError", "status_code": None}
            target = for_wildcard(deployment, name, matched)
        timeout = min(float(info.get("health_check_timeout") or DEFAULT_HEALTH_CHECK_TIMEOUT), deployment.timeout)
        body = {"model": target.model_name, "messages": PROBE_MESSAGES, "max_tokens": 1}
        try:
            if target is not deployment and self.router.clients is not None:
                await target.provider.start(self.router.clients)
                started = True
            async with asyncio.timeout(timeout):
                await target.provider.complete_bytes(body, None, f"health-{random.getrandbits(64):016x}")
        except Exception as exc:
            return False, self._failure(target, exc, timeout)
        finally:
            if started:
                await target.provider.aclose()
        return True, _endpoint(target, Scrubber(()))

    @staticmethod
    def _failure(deployment: Deployment, exc: Exception, timeout: float) -> dict[str, Any]:
        scrub = Scrubber(_secrets(deployment))
        if isinstance(exc, TimeoutError):
            message, kind, cls, status = f"no answer within {timeout:g}s", "timeout", "Timeout", None
        elif isinstance(exc, ApiError):
            cls = error_class(exc)
            message, status = exc.message, exc.status
            kind = "timeout" if cls == "Timeout" else "unreachable" if cls == "APIConnectionError" \
                else error_kind_of(exc)
        else:  # a provider failing in a way it did not foresee: its type only, never its words
            message, kind, cls, status = type(exc).__name__, error_kind_of(exc), "APIError", None
        return {**_endpoint(deployment, scrub), "error": scrub.line(message), "error_kind": kind,
                "error_class": cls, "status_code": status}
