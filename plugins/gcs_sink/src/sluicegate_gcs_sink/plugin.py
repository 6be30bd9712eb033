"""Hook implementations of the ``gcs_sink`` plugin (entry point ``gcs_sink``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sluicegate import Sink, hookimpl
from sluicegate_gcs_sink.sink import GcsBucketSink, validation_problems

__all__ = ("register_sinks", "validate_callback_vars")


@hookimpl
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    register(GcsBucketSink)


@hookimpl
def validate_callback_vars(callback_name: str, callback_vars: Mapping[str, Any]) -> list[str] | None:
    """Report a malformed bucket name or an unusable service-account file when the sink is configured."""
    if callback_name != GcsBucketSink.callback_name:
        return None
    return validation_problems(callback_vars)
