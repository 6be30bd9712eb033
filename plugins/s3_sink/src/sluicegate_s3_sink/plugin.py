"""Sluicegate hook implementations of the ``s3`` sink (entry point ``s3_sink``).

Hooks run at start-up or when an admin writes a configuration, never per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sluicegate import Sink, hookimpl
from sluicegate_s3_sink.sink import S3Sink, validation_problems

__all__ = ("register_sinks", "validate_callback_vars")


@hookimpl
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    register(S3Sink)


@hookimpl
def validate_callback_vars(callback_name: str, callback_vars: Mapping[str, Any]) -> list[str] | None:
    """Report a malformed bucket name, prefix, region or endpoint, or half a key pair, when the sink is configured."""
    if callback_name != S3Sink.callback_name:
        return None
    return validation_problems(callback_vars)
