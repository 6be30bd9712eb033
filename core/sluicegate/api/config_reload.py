"""``POST /config/reload`` (admin): re-read config.yaml and swap it in live (:meth:`Gateway.reload`); also what a
``SIGHUP`` to a single-process gateway does."""

from __future__ import annotations

import logging
import os
import signal

from litestar import Request, Response, post

from sluicegate.api.common import gateway_of, json_response
from sluicegate.config import ConfigError
from sluicegate.delivery.status import query
from sluicegate.errors import error_body

__all__ = ("reload_config",)

log = logging.getLogger("sluicegate")


@post("/config/reload", status_code=200)
async def reload_config(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    try:
        result = await gateway.reload()
    except ConfigError as exc:
        log.error("config reload refused, the running configuration stays: %s", "; ".join(exc.problems))
        return Response(content=error_body("config reload refused, the running configuration stays: "
                                           + "; ".join(exc.problems), type="invalid_request_error",
                                           param="config", code="400", extra={"problems": exc.problems}),
                        status_code=400, media_type="application/json")
    others = "none"
    if gateway.workers > 1:
        # The other workers are restarted one at a time by the supervisor (uvicorn's SIGHUP handling): each
        # replacement loads the file and serves before the worker it replaces stops, and a replacement that cannot
        # start leaves the old one serving.
        os.kill(os.getppid(), signal.SIGHUP)
        others = "restarting one at a time"
    delivery = "inline"
    if gateway.delivery_address is not None:
        # The delivery process re-reads the file too: it decides by the callbacks and team settings which idle
        # sink instances to close (events carry their own routes, so nothing waits on this).
        answer = await query(gateway.delivery_address, "reload", timeout=10.0)
        delivery = ("not answering" if answer is None else "reloaded" if answer.get("reloaded") else
                    "kept its configuration: " + "; ".join(map(str, answer.get("problems") or ())))
    log.info("config reloaded: %d model deployment(s), %d team(s) from config%s", result.models, result.teams,
             f"; restart needed for {', '.join(result.restart_needed)}" if result.restart_needed else "")
    return json_response({"status": "reloaded", "models": result.models, "teams": result.teams,
                          "restart_needed": result.restart_needed, "other_workers": others,
                          "delivery_process": delivery})
