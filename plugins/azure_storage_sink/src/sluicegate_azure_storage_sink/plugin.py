"""Sluicegate hook implementations of the ``azure_storage`` sink (entry point ``azure_storage_sink``).

Hooks run at start-up or when an admin writes a configuration, never per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sluicegate import Sink, hookimpl
from sluicegate_azure_storage_sink.sink import AzureStorageSink, validation_problems

__all__ = ("register_sinks", "validate_callback_vars")


@hookimpl
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    register(AzureStorageSink)


@hookimpl
def validate_callback_vars(callback_name: str, callback_vars: Mapping[str, Any]) -> list[str] | None:
    """Report a malformed account, container, key, SAS token, prefix or endpoint when the sink is configured."""
    if callback_name != AzureStorageSink.callback_name:
        return None
    return validation_problems(callback_vars)
