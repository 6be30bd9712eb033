"""``/health/liveliness`` (process up) and ``/health/readiness`` (database and registered checks), without auth;
``/health`` (admin): every model deployment probed (:mod:`sluicegate.router.health`)."""

from __future__ import annotations

import asyncio

from litestar import Request, Response, get

from sluicegate.aio import bounded
from sluicegate.api.common import gateway_of, json_response
from sluicegate.gateway import NO_MASTER_KEY

__all__ = ("liveliness", "model_health", "readiness")


@get(["/health/liveliness", "/health/liveness"])
async def liveliness() -> Response[bytes]:
    return json_response({"status": "healthy"})


@get("/health/readiness")
async def readiness(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    checks: dict[str, dict[str, object]] = {}
    try:
        await asyncio.wait_for(gateway.store.ping(), 5)
        checks["database"] = {"healthy": True}
    except Exception as exc:
        checks["database"] = {"healthy": False, "details": type(exc).__name__}
    for name, check in gateway.health_checks.items():
        try:
            result = await bounded(check(), 5, f"health check {name}")
            checks[name] = {"healthy": result.healthy, "details": result.details}
        except Exception as exc:
            checks[name] = {"healthy": False, "details": type(exc).__name__}
    delivery = await gateway.delivery_health()
    if delivery is not None:  # `sluicegate serve`'s delivery process (events wait in the workers' logs while down)
        checks["delivery"] = delivery
    if gateway.master_key is None:  # the gateway serves, but nobody can administer it: say so, without failing
        checks["master_key"] = {"healthy": True, "details": NO_MASTER_KEY}
    healthy = all(c["healthy"] for c in checks.values())
    return json_response({"status": "healthy" if healthy else "unhealthy", "checks": checks,
                          "db": "connected" if checks["database"]["healthy"] else "disconnected"},
                         status=200 if healthy else 503)


@get("/health")
async def model_health(request: Request) -> Response[bytes]:
    """Every deployment probed with a minimal call (admin), in LiteLLM's shape: ``healthy_endpoints``,
    ``unhealthy_endpoints`` (each with ``error``, ``error_kind``, ``error_class``, secrets scrubbed) and their counts;
    the background view when ``general_settings.background_health_checks`` is on."""
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    params = request.query_params
    report = await gateway.router.health.report(model=params.get("model") or None,
                                                model_id=params.get("model_id") or None)
    return json_response(report)
