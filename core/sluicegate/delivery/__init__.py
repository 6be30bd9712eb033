"""Delivery off the serving cores: serving workers append events to their own logs, one delivery process per host
reads them all and owns every sink instance (see docs/operations.md, "The delivery process").

- :mod:`sluicegate.delivery.worker_log`: the log a serving worker appends to (:class:`WorkerLog`) and the reader
  the delivery process tails it with (:class:`LogTail`);
- :mod:`sluicegate.delivery.service`: the delivery process's work: tail, dispatch, record progress, serve status;
- :mod:`sluicegate.delivery.status`: the small status socket workers ask for ``/-/sinks`` and readiness;
- :mod:`sluicegate.delivery.supervisor`: ``sluicegate serve``'s parent process: the workers and the delivery
  process, restarted with backoff if it dies.
"""

from __future__ import annotations

__all__ = ("DELIVERY_ENV", "MODES")

DELIVERY_ENV = "SLUICEGATE_DELIVERY"
"""``inline`` or ``process``: how ``sluicegate serve``'s workers deliver (read by each worker's app factory)."""

MODES = ("inline", "process")
