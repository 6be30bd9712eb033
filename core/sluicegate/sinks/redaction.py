"""Message redaction: done once per event, before any sink sees it.

Replaced: request messages (content and tool/function-call arguments), response content, reasoning, tool-call
and function-call arguments (Anthropic messages' text, thinking and tool input blocks too), for plain and streamed
responses alike; for the other endpoints the input they log as messages (embedding input, a prompt, the Responses
API's ``input`` items and ``instructions``, text to speak) and the text of their answers (completions' ``text``, a
response's ``output`` items and ``instructions``, a transcript's ``text`` and segments, an image's
``revised_prompt``). Kept: metadata, usage, error strings. Binary data never reaches an event, redacted or not (the
endpoints log placeholders).
"""

from __future__ import annotations

from typing import Any

import msgspec

from sluicegate.events import REDACTED, LogEvent

__all__ = ("redact",)

_TEXT_KEYS = ("content", "reasoning_content", "reasoning", "refusal", "text", "arguments", "output", "summary")
_ANSWER_TEXT_KEYS = ("text", "segments", "words", "instructions", "output_text")


def _redact_call(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    call = dict(call)
    if isinstance(call.get("function"), dict):
        function = dict(call["function"])
        if "arguments" in function:
            function["arguments"] = REDACTED
        call["function"] = function
    if "arguments" in call:
        call["arguments"] = REDACTED
    return call


def _redact_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return REDACTED
    message = dict(message)
    for key in _TEXT_KEYS:
        if message.get(key) is not None:
            message[key] = REDACTED
    if isinstance(message.get("tool_calls"), list):
        message["tool_calls"] = [_redact_call(c) for c in message["tool_calls"]]
    if message.get("function_call") is not None:
        message["function_call"] = _redact_call(message["function_call"])
    return message


_BLOCK_TEXT = ("text", "thinking", "data")
"""Anthropic content blocks' text: ``text``, ``thinking``, ``redacted_thinking``'s ``data``."""


def _redact_block(block: Any) -> Any:
    """An Anthropic content block (``/v1/messages`` answers): its text, reasoning and tool input replaced."""
    if not isinstance(block, dict):
        return REDACTED
    block = dict(block)
    for key in _BLOCK_TEXT:
        if block.get(key) is not None:
            block[key] = REDACTED
    if "input" in block:
        block["input"] = REDACTED
    if block.get("content") is not None:
        block["content"] = REDACTED
    return block


def _redact_response(response: Any) -> Any:
    if not isinstance(response, dict):
        return REDACTED if response is not None else None
    response = dict(response)
    if isinstance(response.get("content"), list):  # an Anthropic message
        response["content"] = [_redact_block(b) for b in response["content"]]
    choices = response.get("choices")
    if isinstance(choices, list):
        redacted = []
        for choice in choices:
            if isinstance(choice, dict):
                choice = dict(choice)
                for part in ("message", "delta"):
                    if part in choice:
                        choice[part] = _redact_message(choice[part])
                if choice.get("text") is not None:
                    choice["text"] = REDACTED
            redacted.append(choice)
        response["choices"] = redacted
    for key in _ANSWER_TEXT_KEYS:
        if response.get(key) is not None:
            response[key] = REDACTED
    output = response.get("output")
    if isinstance(output, list):  # the Responses API's items (messages, function calls, reasoning)
        response["output"] = [_redact_message(item) for item in output]
    data = response.get("data")
    if isinstance(data, list):  # images' revised prompts
        response["data"] = [{**item, "revised_prompt": REDACTED} if isinstance(item, dict)
                            and item.get("revised_prompt") is not None else item for item in data]
    return response


def redact(event: LogEvent) -> LogEvent:
    """A copy of ``event`` with prompts and completions replaced by :data:`REDACTED`."""
    messages = event.messages
    if isinstance(messages, list):
        messages = [_redact_message(m) for m in messages]
    elif messages is not None:
        messages = REDACTED
    return msgspec.structs.replace(event, messages=messages, response=_redact_response(event.response))
