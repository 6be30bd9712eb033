"""Run events through a sink the way the gateway does: the real :class:`~sluicegate.sinks.dispatcher.Dispatcher`.

Sink authors test behaviour, not our internals: ``await deliver(MySink, {"endpoint": url, ...}, make_event())``
builds the sink from raw callback variables (decoded and validated exactly as for a config entry), submits the
events through the dispatcher (redaction per route, bounded queue, batching up to ``max_batch_size``,
``send_timeout``, retries with backoff, permanent-failure handling), drains it and closes every instance and
the sink class, as a gateway shutdown does. The returned :class:`DeliveryReport` holds the dispatcher's own
counters for the instance.

Delivery settings default to fast test values (10 ms batching, 10–50 ms backoff, 3 retries); pass any
``sluicegate_settings.delivery`` key as a keyword to change one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from sluicegate.config import DeliverySettings
from sluicegate.events import LogEvent
from sluicegate.routing import CallbackSet, Route, instance_id_for
from sluicegate.sinks.base import CallbackVars
from sluicegate.sinks.dispatcher import Dispatcher
from sluicegate.sinks.vars import decode_vars

if TYPE_CHECKING:
    from sluicegate.sinks.base import Sink

__all__ = ("TEST_DELIVERY", "DeliveryReport", "deliver")

TEST_DELIVERY: dict[str, Any] = {
    key: value for key, value in {"batch_interval": 0.01, "max_retries": 3, "retry_base_delay": 0.01,
                                  "retry_max_delay": 0.05, "shutdown_grace": 10.0, "spool": False}.items()
    if key in DeliverySettings.__struct_fields__}
"""Delivery settings :func:`deliver` starts from (the gateway's defaults linger 1 s and back off up to 30 s;
the on-disk spool, a durability feature of the gateway and not of a sink, is off)."""


class DeliveryReport(msgspec.Struct, frozen=True, kw_only=True):
    """What the dispatcher counted for the sink instance (``GET /-/sinks`` shows the same counters)."""

    submitted: int
    """Events queued for the sink (0 when ``callback_type`` excluded them)."""
    sent: int
    """Events ``send`` accepted (returned without raising)."""
    retried: int
    """Failed sends that were retried."""
    dropped: int
    """Events given up: retries exhausted, a permanent failure, a full queue, or the grace period over."""
    failed_sends: int
    """``send`` calls that raised or timed out."""
    last_error: str | None
    """The last failure as an admin would see it (``Kind: message``, secrets of the instance scrubbed)."""

    @property
    def delivered(self) -> bool:
        """Every submitted event was sent and none dropped."""
        return self.submitted > 0 and self.sent == self.submitted and self.dropped == 0


async def deliver(sink_class: type[Sink], callback_vars: Mapping[str, Any] | CallbackVars,
                  events: LogEvent | Iterable[LogEvent], *, redact: bool = False,
                  callback_type: str = "success_and_failure", **delivery: Any) -> DeliveryReport:
    """Deliver ``events`` to a new ``sink_class`` instance through the real dispatcher and report the outcome.

    Args:
        sink_class: the ``Sink`` subclass under test.
        callback_vars: raw variables as an admin writes them (aliases and LiteLLM's string forms accepted,
            decoded with the core's ``decode_vars``), or an already built ``Vars`` instance.
        events: one event or several (e.g. from :func:`sluicegate.testing.make_event`).
        redact: message logging is off for this route (``turn_off_message_logging``): the sink receives
            events with prompts and responses replaced, exactly as in the gateway.
        callback_type: ``"success"``, ``"failure"`` or ``"success_and_failure"`` (which events are routed).
        **delivery: ``sluicegate_settings.delivery`` keys overriding :data:`TEST_DELIVERY`.

    Raises:
        sluicegate.sinks.vars.VarsError: the variables do not decode (the gateway would answer 422).
        TypeError: an unknown delivery setting.
    """
    if callback_type not in ("success", "failure", "success_and_failure"):
        raise ValueError(f"callback_type: expected success, failure or success_and_failure, got {callback_type!r}")
    unknown = sorted(set(delivery) - set(DeliverySettings.__struct_fields__))
    if unknown:
        raise TypeError(f"unknown delivery setting(s): {', '.join(unknown)}")
    settings = msgspec.convert({**TEST_DELIVERY, **delivery}, DeliverySettings)
    vars_ = callback_vars if isinstance(callback_vars, CallbackVars) else decode_vars(sink_class.Vars, callback_vars)
    batch = [events] if isinstance(events, LogEvent) else list(events)
    route = Route(callback_name=sink_class.callback_name,
                  instance_id=instance_id_for(sink_class.callback_name, vars_), sink_class=sink_class,
                  callback_vars=vars_, on_success=callback_type != "failure",
                  on_failure=callback_type != "success", redact=redact)
    callbacks = CallbackSet(routes=(route,), source="key")
    dispatcher = Dispatcher(settings)
    await dispatcher.start()
    slot = None
    try:
        submitted = sum(dispatcher.submit(event, callbacks) for event in batch)
        slot = dispatcher.pool.slots.get(route.instance_id)
        await dispatcher.drain(settings.shutdown_grace)
    finally:
        # aclose() drops what is still queued after the grace period (counted) and closes instance and class.
        await dispatcher.aclose(grace=0 if slot is None else settings.shutdown_grace)
    if slot is None:
        return DeliveryReport(submitted=0, sent=0, retried=0, dropped=0, failed_sends=0, last_error=None)
    return DeliveryReport(submitted=submitted, sent=slot.sent, retried=slot.retried, dropped=slot.dropped,
                          failed_sends=slot.failed_sends, last_error=slot.last_error)
