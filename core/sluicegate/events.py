"""The log event: one per request, with LiteLLM's ``StandardLoggingPayload`` field names.

Events are built from an allow-list of request facts: no API key, upstream key or callback variable can
reach one, because there is no field to put it in.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = ("REDACTED", "LogEvent", "LogMetadata")

REDACTED = "redacted-by-sluicegate"
"""Placeholder that replaces prompts and completions when message logging is turned off."""


class LogMetadata(msgspec.Struct, kw_only=True):
    user_api_key_hash: str | None = None
    user_api_key_alias: str | None = None
    user_api_key_team_id: str | None = None
    user_api_key_team_alias: str | None = None
    user_api_key_user_id: str | None = None
    """The key's ``user_id`` (whose spend the request counts to)."""
    requester_ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    traceparent: str | None = None
    # attribution (sluicegate.attribution): LiteLLM's names
    user_api_key_metadata: dict[str, Any] | None = None
    """The key's metadata without its logging configuration."""
    user_api_key_team_metadata: dict[str, Any] | None = None
    """The team's metadata without its logging configuration."""
    user_api_key_end_user_id: str | None = None
    spend_logs_metadata: dict[str, Any] | None = None
    """The key's ``spend_logs_metadata`` updated with the request's."""
    requester_metadata: dict[str, Any] | None = None
    """The request's ``metadata`` keys that have no field of their own."""
    session_id: str | None = None
    existing_trace_id: str | None = None
    """The caller's trace (request ``metadata.existing_trace_id`` or ``metadata.trace_id``)."""
    trace_name: str | None = None
    generation_name: str | None = None
    generation_id: str | None = None
    trace_user_id: str | None = None
    trace_metadata: dict[str, Any] | None = None
    redaction: dict[str, Any] | None = None
    """Set when a redaction policy ran on this copy of the event: ``policy`` (its id), ``redactors`` (name →
    replacements made), ``scanned`` and ``dropped`` fields. Counts only, never what was found."""


class LogEvent(msgspec.Struct, kw_only=True):
    """One request, as every sink receives it. ``msgspec.json.encode(event)`` gives its JSON."""

    id: str
    trace_id: str
    call_type: str = "completion"
    stream: bool = False
    status: Literal["success", "failure"] = "success"
    model: str = ""
    model_id: str | None = None
    model_group: str = ""
    api_base: str | None = None
    custom_llm_provider: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    response_cost: float = 0.0
    saved_cache_cost: float = 0.0
    """What a response-cache hit would have cost upstream (its ``response_cost`` is 0)."""
    startTime: float = 0.0
    endTime: float = 0.0
    completionStartTime: float | None = None
    response_time: float = 0.0
    messages: Any = None
    response: Any = None
    error_str: str | None = None
    error_information: dict[str, Any] | None = None
    model_parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    metadata: LogMetadata = msgspec.field(default_factory=LogMetadata)
    cache_hit: bool = False
    cache_key: str | None = None
    request_tags: list[str] = msgspec.field(default_factory=list)
    """Request ``metadata.tags``, the ``x-litellm-tags`` / ``x-sluicegate-tags`` headers, the key's and the
    team's ``tags``."""
    end_user: str | None = None
    """The request's ``user`` field."""
    attempts: list[dict[str, Any]] | None = None
    """The router's upstream calls for this request, in order: ``model_id``, ``model_group``, ``status_code``,
    ``error_class`` (None on success) and ``duration`` (seconds); None when no upstream was called."""
