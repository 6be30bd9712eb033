"""Sluicegate hook implementations of the ``arize_phoenix`` and ``arize`` sinks (entry point ``arize_phoenix_sink``).

Hooks run at start-up or when an admin writes a configuration, never per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sluicegate import Sink, hookimpl
from sluicegate_arize_phoenix_sink.sink import ArizePhoenixSink, ArizeSink, problems

__all__ = ("register_sinks", "validate_callback_vars")


@hookimpl
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    register(ArizePhoenixSink)
    register(ArizeSink)


@hookimpl
def validate_callback_vars(callback_name: str, callback_vars: Mapping[str, Any]) -> list[str] | None:
    """Report an unusable endpoint, project name or key when either sink is configured."""
    if callback_name not in (ArizePhoenixSink.callback_name, ArizeSink.callback_name):
        return None
    return problems(callback_name, callback_vars)
