"""What kind of failure an upstream error is, in LiteLLM's exception names, and whether it is worth retrying."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluicegate.errors import ApiError

__all__ = ("COOLDOWN_CLASSES", "RETRYABLE_CLASSES", "error_class", "policy_field")

RETRYABLE_CLASSES = frozenset({"APIConnectionError", "Timeout", "RateLimitError", "InternalServerError",
                               "ServiceUnavailableError"})
"""Retried by default: connection errors, timeouts (408 included), 429 and 5xx."""

COOLDOWN_CLASSES = frozenset({"APIConnectionError", "Timeout", "RateLimitError", "InternalServerError",
                              "ServiceUnavailableError", "AuthenticationError", "PermissionDeniedError",
                              "NotFoundError"})
"""Failures that count towards a deployment's cooldown (a bad request is the client's, not the deployment's)."""

_CONTEXT_WORDS = ("context_length_exceeded", "context length", "context window", "maximum context",
                  "too many tokens", "prompt is too long")
_CONTENT_POLICY_WORDS = ("content_filter", "content_policy", "content management policy", "responsibleaipolicy")

_POLICY_FIELDS = {
    "BadRequestError": "BadRequestError", "ContextWindowExceededError": "BadRequestError",
    "AuthenticationError": "AuthenticationError", "PermissionDeniedError": "AuthenticationError",
    "Timeout": "TimeoutError", "RateLimitError": "RateLimitError",
    "ContentPolicyViolationError": "ContentPolicyViolationError", "InternalServerError": "InternalServerError",
    "ServiceUnavailableError": "InternalServerError", "APIConnectionError": "InternalServerError",
}


def error_class(exc: ApiError) -> str:
    """LiteLLM's exception name for this error (``RateLimitError``, ``Timeout``, ``ContextWindowExceededError``...)."""
    status = exc.status
    if exc.type == "upstream_unreachable":
        return "APIConnectionError"
    if exc.type == "timeout" or status == 408:
        return "Timeout"
    if status == 429:
        return "RateLimitError"
    if status == 401:
        return "AuthenticationError"
    if status == 403:
        return "PermissionDeniedError"
    if status == 404:
        return "NotFoundError"
    if status == 503:
        return "ServiceUnavailableError"
    if status >= 500:
        return "InternalServerError"
    if 400 <= status < 500:
        text = f"{exc.code} {exc.type} {exc.message} {exc.extra or ''}".lower()
        if any(word in text for word in _CONTEXT_WORDS):
            return "ContextWindowExceededError"
        if any(word in text for word in _CONTENT_POLICY_WORDS):
            return "ContentPolicyViolationError"
        return "BadRequestError"
    return "APIError"


def policy_field(error: str, suffix: str) -> str | None:
    """The ``retry_policy`` (suffix ``Retries``) or ``allowed_fails_policy`` (``AllowedFails``) field for a class."""
    base = _POLICY_FIELDS.get(error)
    return f"{base}{suffix}" if base else None
