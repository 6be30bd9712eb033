"""Sluicegate hook implementations of the ``datadog`` sink (entry point ``datadog_sink``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sluicegate import Sink, hookimpl
from sluicegate_datadog_sink.sink import DatadogSink, config_problems

__all__ = ("register_sinks", "validate_callback_vars")


@hookimpl
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    register(DatadogSink)


@hookimpl
def validate_callback_vars(callback_name: str, callback_vars: Mapping[str, Any]) -> list[str] | None:
    if callback_name != DatadogSink.callback_name:
        return None
    return config_problems(callback_vars)
