"""Realistic sample events for sink tests."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sluicegate.events import LogEvent, LogMetadata

__all__ = ("make_event",)


def make_event(*, team_id: str | None = "team-1", status: str = "success", **overrides: Any) -> LogEvent:
    """A complete chat-completion event as the gateway builds it; ``overrides`` replace any field."""
    now = time.time()
    request_id = overrides.pop("request_id", None) or uuid.uuid4().hex
    fields: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "trace_id": request_id,
        "call_type": "completion",
        "stream": False,
        "status": status,
        "model": "gpt-4o-mini",
        "model_group": "gpt-4o-mini",
        "api_base": "http://127.0.0.1:9/v1",
        "custom_llm_provider": "openai",
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
        "response_cost": 0.000123,
        "startTime": now - 0.25,
        "endTime": now,
        "completionStartTime": now - 0.1,
        "response_time": 0.25,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "response": {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        },
        "model_parameters": {"temperature": 0.2},
        "metadata": LogMetadata(
            user_api_key_hash="0" * 64,
            user_api_key_alias="alias-1",
            user_api_key_team_id=team_id,
            user_api_key_team_alias=f"{team_id} alias" if team_id else None,
            requester_ip_address="127.0.0.1",
            user_agent="pytest",
            request_id=request_id,
        ),
    }
    if status == "failure":
        fields.update(response=None, error_str="upstream returned 500", completion_tokens=0, total_tokens=12,
                      error_information={"error_class": "UpstreamError", "status_code": 500})
    fields.update(overrides)
    return LogEvent(**fields)
