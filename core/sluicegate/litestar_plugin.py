"""The one bridge between Litestar and the gateway: an ``InitPlugin`` whose lifespan starts and stops it."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from litestar.plugins import InitPluginProtocol

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from litestar import Litestar
    from litestar.config.app import AppConfig

    from sluicegate.gateway import Gateway

__all__ = ("SluicegatePlugin",)


class SluicegatePlugin(InitPluginProtocol):
    __slots__ = ("gateway",)

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.state["gateway"] = self.gateway
        app_config.lifespan.append(self.lifespan)
        return app_config

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncGenerator[None, None]:
        await self.gateway.start()
        try:
            yield
        finally:
            await self.gateway.stop()
