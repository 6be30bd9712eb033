"""Legacy completions and the Responses API over chat, for providers whose upstream serves chat only.

A provider lists the endpoints its upstream speaks natively (``Provider.endpoints``); for one that lacks
``completions`` or ``responses`` but serves ``chat/completions`` (Anthropic, Gemini, Vertex AI, Bedrock, the
OpenAI-compatible vendors' ``responses``), the request is turned into a chat request, the provider answers it as
chat (translating to its own protocol as it always does), and the answer is turned back: a ``text_completion``,
or a ``response`` object; streamed, chat chunks become ``text_completion`` chunks, or the Responses API's events
(``response.created`` ... ``response.output_text.delta`` ... ``response.completed``).

What has no chat equivalent is refused with a 400 naming the field and the provider (stored responses and
``previous_response_id``, built-in tools, several prompts in one request, ``echo``, ``logprobs``, ``suffix``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from sluicegate.errors import ApiError
from sluicegate.providers.base import SSEDecoder

if TYPE_CHECKING:
    from sluicegate.providers.models import Deployment

__all__ = ("ResponsesStream", "TextCompletionStream", "chat_to_response", "chat_to_text_completion",
           "completion_to_chat", "responses_to_chat")

_json = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def _refuse(deployment: Deployment, field: str, why: str) -> ApiError:
    return ApiError(400, f"{field}: {why} (provider {deployment.custom_llm_provider}, model "
                         f"{deployment.model_name!r}, served through its chat API)", param=field,
                    code="unsupported_params")


def _hex() -> str:
    import uuid

    return uuid.uuid4().hex


# -- legacy completions ---------------------------------------------------------------------------------------
_COMPLETION_TO_CHAT = ("max_tokens", "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty",
                       "seed", "user", "logit_bias", "stream")
_COMPLETION_REFUSED = ("echo", "logprobs", "best_of", "suffix")


def completion_to_chat(body: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    """A ``completions`` request as a chat request: the prompt as one user message."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise _refuse(deployment, "prompt", "one prompt string only (not several prompts or token arrays)")
        prompt = prompt[0]
    for name in _COMPLETION_REFUSED:
        if body.get(name) not in (None, False, 0, 1) or (name == "suffix" and body.get(name)):
            raise _refuse(deployment, name, "not available")
    chat: dict[str, Any] = {"model": body["model"], "messages": [{"role": "user", "content": prompt}]}
    for name in _COMPLETION_TO_CHAT:
        if body.get(name) is not None:
            chat[name] = body[name]
    unknown = sorted(k for k in body if k not in (*_COMPLETION_TO_CHAT, *_COMPLETION_REFUSED, "model", "prompt",
                                                  "stream_options") and body[k] is not None)
    if unknown:
        raise _refuse(deployment, unknown[0], "not a legacy completions parameter this gateway translates")
    if body.get("stream"):
        chat["stream_options"] = {"include_usage": True}  # the event's usage; the client gets it only if asked
    return chat


def chat_to_text_completion(chat: dict[str, Any]) -> dict[str, Any]:
    choices = []
    for choice in chat.get("choices") or ():
        message = choice.get("message") or {}
        choices.append({"text": message.get("content") or "", "index": choice.get("index", 0), "logprobs": None,
                        "finish_reason": choice.get("finish_reason") or "stop"})
    answer = {"id": "cmpl-" + str(chat.get("id") or _hex()).removeprefix("chatcmpl-"), "object": "text_completion",
              "created": chat.get("created") or int(time.time()), "model": chat.get("model"), "choices": choices}
    if isinstance(chat.get("usage"), dict):
        answer["usage"] = chat["usage"]
    return answer


class _ChatChunks:
    """Chat SSE bytes in, decoded chunk dicts out (``[DONE]`` ends them)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.headers = {"content-type": "text/event-stream"}

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        decoder = SSEDecoder()
        async for data in self.source.aiter_raw():
            for _, payload in decoder.feed(data):
                if payload.strip() == b"[DONE]":
                    return
                try:
                    chunk = _decoder.decode(payload)
                except msgspec.DecodeError:
                    continue
                if isinstance(chunk, dict):
                    yield chunk

    async def aclose(self) -> None:
        await self.source.aclose()


class TextCompletionStream(_ChatChunks):
    """A chat stream relayed as legacy ``text_completion`` chunks, ending in ``[DONE]``."""

    def __init__(self, source: Any, include_usage: bool) -> None:
        super().__init__(source)
        self.include_usage = include_usage
        self.usage: dict[str, Any] | None = None
        """The answer's usage, for the event, whether or not the client asked for it."""

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks():
            if "error" in chunk:
                yield b"data: " + _json.encode(chunk) + b"\n\n"
                continue
            choices = [{"text": (c.get("delta") or {}).get("content") or "", "index": c.get("index", 0),
                        "logprobs": None, "finish_reason": c.get("finish_reason")}
                       for c in chunk.get("choices") or () if isinstance(c, dict)]
            usage = chunk.get("usage")
            if usage:
                self.usage = usage
            if not choices and not (usage and self.include_usage):
                continue
            out: dict[str, Any] = {"id": "cmpl-" + str(chunk.get("id") or "").removeprefix("chatcmpl-"),
                                   "object": "text_completion", "created": chunk.get("created"),
                                   "model": chunk.get("model"), "choices": choices}
            if usage and self.include_usage:
                out["usage"] = usage
            yield b"data: " + _json.encode(out) + b"\n\n"
        yield b"data: [DONE]\n\n"


# -- the Responses API ----------------------------------------------------------------------------------------
_RESPONSES_TO_CHAT = {"temperature": "temperature", "top_p": "top_p", "max_output_tokens": "max_tokens",
                      "parallel_tool_calls": "parallel_tool_calls", "user": "user", "stream": "stream"}
_RESPONSES_IGNORED = frozenset({"model", "input", "instructions", "tools", "tool_choice", "text", "reasoning",
                                "store", "stream_options", "include", "truncation", "service_tier"})
"""Read below, or without effect on an answer that is not stored (``store``, ``include``, ``truncation``)."""


def _content(parts: Any, where: str, deployment: Deployment) -> Any:
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        raise _refuse(deployment, where, "expected a string or an array of content parts")
    out = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            out.append({"type": "text", "text": part.get("text") or ""})
        elif kind == "input_image" and part.get("image_url"):
            out.append({"type": "image_url", "image_url": {"url": part["image_url"],
                                                           "detail": part.get("detail") or "auto"}})
        else:
            raise _refuse(deployment, f"{where}[{j}].type", f"content part {kind!r} has no chat equivalent here")
    if all(p["type"] == "text" for p in out):
        return "".join(p["text"] for p in out)
    return out


def _input_messages(value: Any, deployment: Deployment) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise ApiError(400, "input: expected a string or an array of input items", param="input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ApiError(400, f"input[{i}]: expected an object", param="input")
        kind = item.get("type") or "message"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ApiError(400, f"input[{i}].role: expected user, assistant, system or developer",
                               param="input")
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _content(item.get("content"), f"input[{i}].content", deployment)})
        elif kind == "function_call":
            call = {"id": item.get("call_id") or item.get("id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": output if isinstance(output, str) else _json.encode(output).decode()})
        elif kind == "reasoning":
            continue  # a previous answer's reasoning summary: chat takes none back
        else:
            raise _refuse(deployment, f"input[{i}].type", f"input item {kind!r} has no chat equivalent")
    return messages


def responses_to_chat(body: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    """A Responses API request as a chat request (``instructions`` as the system message)."""
    if body.get("previous_response_id"):
        raise _refuse(deployment, "previous_response_id", "responses are not stored for this provider; send the "
                                                          "conversation as input items")
    if body.get("background"):
        raise _refuse(deployment, "background", "background responses are not available")
    if body.get("conversation") or body.get("prompt"):
        field = "conversation" if body.get("conversation") else "prompt"
        raise _refuse(deployment, field, "stored conversations and prompts are not available")
    messages = []
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.append({"role": "system", "content": body["instructions"]})
    messages += _input_messages(body.get("input"), deployment)
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    for ours, theirs in _RESPONSES_TO_CHAT.items():
        if body.get(ours) is not None:
            chat[theirs] = body[ours]
    tools = body.get("tools")
    if tools:
        chat["tools"] = []
        for i, tool in enumerate(tools if isinstance(tools, list) else ()):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else None
                raise _refuse(deployment, f"tools[{i}].type", f"tool {kind!r} is built into OpenAI; only "
                                                              "function tools are translated")
            function = {"name": tool.get("name"), "parameters": tool.get("parameters") or {"type": "object"}}
            if tool.get("description"):
                function["description"] = tool["description"]
            if tool.get("strict") is not None:
                function["strict"] = tool["strict"]
            chat["tools"].append({"type": "function", "function": function})
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        raise _refuse(deployment, "tool_choice", "only auto, none, required or a function")
    text_format = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": {
            k: text_format[k] for k in ("name", "schema", "strict", "description") if k in text_format}}
    elif isinstance(text_format, dict) and text_format.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        chat["reasoning_effort"] = reasoning["effort"]
    unknown = sorted(k for k in body if k not in _RESPONSES_TO_CHAT and k not in _RESPONSES_IGNORED
                     and body[k] is not None)
    if unknown:
        raise _refuse(deployment, unknown[0], "not a Responses API parameter this gateway translates to chat")
    if body.get("stream"):
        chat["stream_options"] = {"include_usage": True}
    return chat


def _response_usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or details.get("cache_creation_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": int(usage.get("total_tokens") or prompt + completion)}


def _response_shell(body: dict[str, Any], rid: str, created: int, model: Any, status: str) -> dict[str, Any]:
    """The fields of a ``response`` object that echo the request."""
    text = body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}}
    return {"id": rid, "object": "response", "created_at": created, "status": status, "error": None,
            "incomplete_details": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "model": model, "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None, "reasoning": body.get("reasoning"), "store": False,
            "temperature": body.get("temperature"), "text": text, "tool_choice": body.get("tool_choice") or "auto",
            "tools": body.get("tools") or [], "top_p": body.get("top_p"), "truncation": "disabled",
            "usage": None, "user": body.get("user"), "metadata": {}}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []}


def _call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {"type": "function_call", "id": item_id, "call_id": call.get("id") or "call_" + _hex()[:24],
            "name": function.get("name") or "", "arguments": function.get("arguments") or "", "status": status}


def chat_to_response(chat: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` as the Responses API's ``response`` object."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    answer = _response_shell(body, "resp_" + _hex(), chat.get("created") or int(time.time()), chat.get("model"),
                             "completed")
    if message.get("content"):
        answer["output"].append(_message_item("msg_" + _hex(), message["content"]))
    for call in message.get("tool_calls") or ():
        answer["output"].append(_call_item("fc_" + _hex(), call))
    if choice.get("finish_reason") == "length":
        answer["status"] = "incomplete"
        answer["incomplete_details"] = {"reason": "max_output_tokens"}
    answer["usage"] = _response_usage(chat.get("usage"))
    return answer


class ResponsesStream(_ChatChunks):
    """A chat stream relayed as the Responses API's server-sent events, each as soon as its chunk arrives."""

    def __init__(self, source: Any, body: dict[str, Any]) -> None:
        super().__init__(source)
        self.body = body
        self.sequence = 0

    def _event(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _json.encode(payload) + b"\n\n"

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        response = _response_shell(self.body, "resp_" + _hex(), int(time.time()), self.body.get("model"),
                                   "in_progress")
        yield self._event("response.created", response=response)
        yield self._event("response.in_progress", response=response)
        output: dict[int, dict[str, Any]] = {}  # output index -> finished item
        text: list[str] | None = None  # the open message item's text
        text_id = ""
        text_index = 0
        next_index = 0
        calls: dict[int, tuple[int, dict[str, Any]]] = {}  # chat tool-call index -> (output index, item)
        usage = None
        finish = None

        def close_text() -> list[bytes]:
            nonlocal text
            if text is None:
                return []
            index, joined = text_index, "".join(text)
            item = _message_item(text_id, joined)
            output[index] = item
            text = None
            part = item["content"][0]
            return [self._event("response.output_text.done", item_id=text_id, output_index=index, content_index=0,
                                text=joined, logprobs=[]),
                    self._event("response.content_part.done", item_id=text_id, output_index=index,
                                content_index=0, part=part),
                    self._event("response.output_item.done", output_index=index, item=item)]

        async for chunk in self.chunks():
            if "error" in chunk:
                error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
                yield self._event("error", code=error.get("code"), message=error.get("message"),
                                  param=error.get("param"))
                return
            response["model"] = chunk.get("model") or response["model"]
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                finish = choice.get("finish_reason") or finish
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                if isinstance(piece, str) and piece:
                    if text is None:
                        text, text_id = [], "msg_" + _hex()
                        index = text_index = next_index
                        next_index += 1
                        yield self._event("response.output_item.added", output_index=index,
                                          item=_message_item(text_id, "", "in_progress"))
                        yield self._event("response.content_part.added", item_id=text_id, output_index=index,
                                          content_index=0, part={"type": "output_text", "text": "",
                                                                 "annotations": []})
                    text.append(piece)
                    yield self._event("response.output_text.delta", item_id=text_id,
                                      output_index=text_index, content_index=0, delta=piece,
                                      logprobs=[])
                for call in delta.get("tool_calls") or ():
                    if not isinstance(call, dict):
                        continue
                    for frame in close_text():
                        yield frame
                    position = int(call.get("index", 0))
                    if position not in calls:
                        item = _call_item("fc_" + _hex(), call, "in_progress")
                        arguments = item["arguments"]
                        item["arguments"] = ""
                        calls[position] = (next_index, item)
                        next_index += 1
                        yield self._event("response.output_item.added", output_index=calls[position][0], item=item)
                    else:
                        arguments = (call.get("function") or {}).get("arguments") or ""
                    index, item = calls[position]
                    if arguments:
                        item["arguments"] += arguments
                        yield self._event("response.function_call_arguments.delta", item_id=item["id"],
                                          output_index=index, delta=arguments)
        for frame in close_text():
            yield frame
        for position in sorted(calls):
            index, item = calls[position]
            item["status"] = "completed"
            yield self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                              name=item["name"], arguments=item["arguments"])
            yield self._event("response.output_item.done", output_index=index, item=item)
            output[index] = item
        response["output"] = [output[i] for i in sorted(output)]
        response["usage"] = _response_usage(usage)
        if finish == "length":
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": "max_output_tokens"}
            yield self._event("response.incomplete", response=response)
        else:
            response["status"] = "completed"
            yield self._event("response.completed", response=response)
