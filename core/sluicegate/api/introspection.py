"""``/-/plugins`` and ``/-/sinks``: what is installed and how delivery is going (admin only, no secrets)."""

from __future__ import annotations

import msgspec
from litestar import Request, Response, get

from sluicegate.api.common import gateway_of, json_response

__all__ = ("plugins", "sinks")


@get("/-/plugins")
async def plugins(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.authorize(request, "proxy_admin_viewer")
    described = gateway.pm.describe(gateway.registry.by_plugin(), gateway.providers.by_plugin(),
                                    gateway.resolver.redaction.registry.by_plugin())
    return json_response([msgspec.to_builtins(p) for p in described])


@get("/-/sinks")
async def sinks(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.authorize(request, "proxy_admin_viewer")
    return json_response({**await gateway.delivery_stats(), "cache": gateway.cache.stats()})
