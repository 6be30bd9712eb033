"""Sluicegate: an OpenAI-compatible LLM gateway with per-team and per-key logging sinks.

The names below are the public API for plugin authors.
"""

from __future__ import annotations

from sluicegate.events import LogEvent, LogMetadata
from sluicegate.hookspecs import hookimpl
from sluicegate.providers.base import Provider, ProviderParams, UpstreamError
from sluicegate.redaction.base import Redactor, RedactorOptions
from sluicegate.sinks.base import CallbackVars, HealthResult, SecretStr, Sink

__all__ = ("CallbackVars", "HealthResult", "LogEvent", "LogMetadata", "Provider", "ProviderParams", "Redactor",
           "RedactorOptions", "SecretStr", "Sink", "UpstreamError", "hookimpl")

__version__ = "0.1.0"
