"""Who a call is for, as the requester and the key's owner tell it: LiteLLM's attribution fields, bounded.

From the request: ``metadata`` (LiteLLM's names ``tags``, ``session_id``, ``trace_id``/``existing_trace_id``,
``trace_name``, ``generation_name``, ``trace_user_id``, ``trace_metadata``, ``generation_id``, ``spend_logs_metadata``;
any other key is kept as ``requester_metadata``), the ``user`` field (``end_user``) and the ``x-litellm-tags`` /
``x-sluicegate-tags`` headers. From the key and its team: their ``metadata`` without the logging configuration
(which holds sink credentials) and their ``tags``.

Everything is checked before the upstream is called: a field of the wrong type or too large is a 400 naming it,
so an event never carries a megabyte nobody asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from sluicegate.auth import AuthContext

__all__ = ("MAX_METADATA_BYTES", "MAX_TAGS", "Attribution", "owner_metadata", "request_attribution")

MAX_METADATA_BYTES = 16 * 1024
"""The request's ``metadata`` as JSON, at most (LiteLLM sets no bound; a larger one is a 400 naming it)."""
MAX_TAGS = 64
MAX_TAG_CHARS = 256
MAX_ID_CHARS = 512
"""``user``, ids and names: at most this many characters."""

_encoder = msgspec.json.Encoder()
_ID_FIELDS = ("session_id", "trace_name", "generation_name", "trace_user_id", "generation_id")
_KNOWN = frozenset({*_ID_FIELDS, "tags", "trace_id", "existing_trace_id", "trace_metadata", "spend_logs_metadata"})
_OWNER_PRIVATE = frozenset({"logging", "callbacks", "callback_vars", "success_callback", "failure_callback",
                            "redaction"})
"""Key and team metadata keys that never enter an event: they configure sinks and hold their credentials, or say
what the redaction policy looks for."""
_TAG_HEADERS = ("x-litellm-tags", "x-sluicegate-tags")


class Attribution(msgspec.Struct, kw_only=True, frozen=True):
    """The attribution of one request, checked and bounded."""

    request_tags: list[str] = msgspec.field(default_factory=list)
    end_user: str | None = None
    session_id: str | None = None
    existing_trace_id: str | None = None
    trace_name: str | None = None
    generation_name: str | None = None
    trace_user_id: str | None = None
    generation_id: str | None = None
    trace_metadata: dict[str, Any] | None = None
    requester_metadata: dict[str, Any] | None = None
    spend_logs_metadata: dict[str, Any] | None = None


NO_ATTRIBUTION = Attribution()


def _tags(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ApiError(400, f"{where}: expected an array of strings", param=where.split(".")[0])
    if len(value) > MAX_TAGS:
        raise ApiError(400, f"{where}: at most {MAX_TAGS} tags, got {len(value)}", param=where.split(".")[0])
    for tag in value:
        if len(tag) > MAX_TAG_CHARS:
            raise ApiError(400, f"{where}: a tag has more than {MAX_TAG_CHARS} characters",
                           param=where.split(".")[0])
    return value


def _text(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{where}: expected a string", param=where.split(".")[0])
    if len(value) > MAX_ID_CHARS:
        raise ApiError(400, f"{where}: at most {MAX_ID_CHARS} characters, got {len(value)}",
                       param=where.split(".")[0])
    return value


def _object(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, f"{where}: expected a JSON object", param="metadata")
    return value


def _merge_tags(*sources: list[str]) -> list[str]:
    merged: list[str] = []
    for source in sources:
        for tag in source:
            if tag not in merged:
                merged.append(tag)
    return merged[:MAX_TAGS]


def request_attribution(metadata: Any, user: Any, headers: Mapping[str, str]) -> Attribution:
    """Check and split a request's ``metadata``, ``user`` and tag headers (a 400 naming the field otherwise).

    ``metadata`` is the value the client sent (already taken out of the body), or None.
    """
    header_tags: list[str] = []
    for name in _TAG_HEADERS:
        value = headers.get(name)
        if value:
            header_tags.extend(t.strip() for t in value.split(",") if t.strip())
    if header_tags:
        _tags(header_tags, "x-litellm-tags")
    end_user = _text(user, "user")
    if metadata is None:
        if not header_tags and end_user is None:
            return NO_ATTRIBUTION
        return Attribution(request_tags=header_tags, end_user=end_user)
    if not isinstance(metadata, dict):
        raise ApiError(400, "metadata: expected a JSON object", param="metadata")
    size = len(_encoder.encode(metadata))
    if size > MAX_METADATA_BYTES:
        raise ApiError(400, f"metadata: {size} bytes as JSON, at most {MAX_METADATA_BYTES}", param="metadata")
    tags = _tags(metadata["tags"], "metadata.tags") if metadata.get("tags") is not None else []
    fields = {name: _text(metadata.get(name), f"metadata.{name}") for name in _ID_FIELDS}
    trace_id = _text(metadata.get("existing_trace_id"), "metadata.existing_trace_id") or _text(
        metadata.get("trace_id"), "metadata.trace_id")
    others = {k: v for k, v in metadata.items() if k not in _KNOWN}
    return Attribution(
        request_tags=_merge_tags(tags, header_tags), end_user=end_user, existing_trace_id=trace_id,
        trace_metadata=_object(metadata.get("trace_metadata"), "metadata.trace_metadata"),
        spend_logs_metadata=_object(metadata.get("spend_logs_metadata"), "metadata.spend_logs_metadata"),
        requester_metadata=others or None, **fields)


def owner_metadata(ctx: AuthContext) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]]:
    """The key's and the team's metadata as an event may carry them (sink configuration left out), and their
    ``tags``."""
    key_meta = ctx.key.metadata if ctx.key is not None else None
    team_meta = ctx.team.metadata if ctx.team is not None else None
    tags: list[str] = []
    for meta in (key_meta, team_meta):
        if meta and isinstance(meta.get("tags"), list):
            tags.extend(t for t in meta["tags"] if isinstance(t, str))
    return _public(key_meta), _public(team_meta), tags


def _public(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if not meta:
        return None
    return {k: v for k, v in meta.items() if k not in _OWNER_PRIVATE} or None
