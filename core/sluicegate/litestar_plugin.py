"""The one bridge between Litestar and the gateway: an ``InitPlugin`` whose lifespan starts and stops it."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from litestar.plugins import InitPluginProtocol

from sluicegate.config import ConfigError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from litestar import Litestar
    from litestar.config.app import AppConfig

    from sluicegate.gateway import Gateway

__all__ = ("SluicegatePlugin",)

log = logging.getLogger("sluicegate")


class SluicegatePlugin(InitPluginProtocol):
    __slots__ = ("_reloads", "gateway", "reload_on_sighup")

    def __init__(self, gateway: Gateway, *, reload_on_sighup: bool = False) -> None:
        self.gateway = gateway
        self.reload_on_sighup = reload_on_sighup  # a served process (`sluicegate serve`), not an embedding app
        self._reloads: set[asyncio.Task[None]] = set()

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.state["gateway"] = self.gateway
        app_config.lifespan.append(self.lifespan)
        return app_config

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self) -> None:
        try:
            result = await self.gateway.reload()
        except ConfigError as exc:
            log.error("SIGHUP: config reload refused, the running configuration stays: %s", "; ".join(exc.problems))
            return
        except Exception as exc:  # a provider that cannot start (credentials...): keep serving the old config
            log.error("SIGHUP: config reload failed, the running configuration stays: %s", exc)
            return
        log.info("SIGHUP: config reloaded: %d model deployment(s), %d team(s) from config%s", result.models,
                 result.teams, f"; restart needed for {', '.join(result.restart_needed)}"
                 if result.restart_needed else "")

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncGenerator[None, None]:
        await self.gateway.start()
        loop = asyncio.get_running_loop()
        if self.reload_on_sighup:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            yield
        finally:
            if self.reload_on_sighup:
                loop.remove_signal_handler(signal.SIGHUP)
            await self.gateway.stop()
