"""Sluicegate hook implementations of the ``langsmith`` sink (entry point ``langsmith_sink``).

Hooks run at start-up or when an admin writes a configuration, never per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sluicegate import Sink, hookimpl
from sluicegate_langsmith_sink.sink import LangsmithSink, validation_problems

__all__ = ("register_sinks", "validate_callback_vars")


@hookimpl
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    register(LangsmithSink)


@hookimpl
def validate_callback_vars(callback_name: str, callback_vars: Mapping[str, Any]) -> list[str] | None:
    """Report a malformed base URL, sampling rate, project name or API key when the sink is configured."""
    if callback_name != LangsmithSink.callback_name:
        return None
    return validation_problems(callback_vars)
