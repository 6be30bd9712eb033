"""``/model/info`` and ``/v1/model/info`` (admin): every deployment of every model group, secrets masked."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from sluicegate.api.common import gateway_of, json_response

__all__ = ("model_info", "model_info_v1")


async def _info(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.authorize(request, "proxy_admin_viewer")
    wanted = request.query_params.get("litellm_model_id")
    data: list[dict[str, Any]] = []
    for deployment in gateway.models.all:
        if wanted is not None and deployment.model_id != wanted:
            continue
        cooling = gateway.router.state.cooling_until(deployment.model_id)
        data.append({
            "model_name": deployment.model_name,
            "litellm_params": deployment.public_params or {},
            "model_info": {**(deployment.model_info or {}), "id": deployment.model_id,
                           "custom_llm_provider": deployment.custom_llm_provider,
                           "cooldown_until": cooling},
        })
    return json_response({"data": data})


@get("/v1/model/info")
async def model_info_v1(request: Request) -> Response[bytes]:
    return await _info(request)


@get("/model/info")
async def model_info(request: Request) -> Response[bytes]:
    return await _info(request)
