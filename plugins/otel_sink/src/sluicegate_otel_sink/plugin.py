"""Hook implementations of the ``otel_sink`` plugin: the ``otel`` sink and its configuration checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sluicegate import Sink, hookimpl

from sluicegate_otel_sink.sink import OtelSink, problems

__all__ = ("register_sinks", "validate_callback_vars")


@hookimpl
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    register(OtelSink)


@hookimpl
def validate_callback_vars(callback_name: str, callback_vars: Mapping[str, Any]) -> list[str] | None:
    if callback_name != OtelSink.callback_name:
        return None
    # The core passes the variables as written: map any alias to its field name first.
    aliases = OtelSink.Vars.aliases
    return problems({aliases.get(key, key): value for key, value in callback_vars.items()})
