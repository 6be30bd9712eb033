"""``python -m sluicegate.delivery``: the delivery process (started and restarted by ``sluicegate serve``).

Reads the configuration from ``$SLUICEGATE_CONFIG`` as the workers do (again on SIGHUP: callbacks and team settings,
for closing the instances no route leads to any more); runs until SIGTERM or SIGINT, then reads
what the workers wrote before they stopped, delivers within ``delivery.shutdown_grace`` and keeps the rest in the
spool for the next start.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

__all__ = ("main",)

log = logging.getLogger("sluicegate.delivery")


async def run() -> int:
    from sluicegate.cli import ALLOW_UNKNOWN_KEYS_ENV, CONFIG_ENV
    from sluicegate.config import load_settings
    from sluicegate.delivery.service import DeliveryService

    allow_unknown_keys = bool(os.environ.get(ALLOW_UNKNOWN_KEYS_ENV))
    settings = load_settings(os.environ[CONFIG_ENV], allow_unknown_keys=allow_unknown_keys)
    service = DeliveryService(settings, allow_unknown_keys=allow_unknown_keys)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloading: set[asyncio.Task[list[str]]] = set()

    def hangup() -> None:  # config.yaml re-read (serve passes SIGHUP on to this process as to the workers)
        task = loop.create_task(service.reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    await service.start()
    # As in a serving worker: what lives as long as the process stays out of the collector's passes.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
    log.info("delivery process %d: reading the worker logs under %s", os.getpid(), service.base)
    await stop.wait()
    await service.aclose()
    return 0


def main() -> int:
    import uvloop

    from sluicegate.cli import _setup_logging, name_process

    name_process("sg-delivery")
    _setup_logging(os.environ.get("SLUICEGATE_LOG_LEVEL", "info"))
    return uvloop.run(run())


if __name__ == "__main__":
    sys.exit(main())
