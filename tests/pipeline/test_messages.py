"""``POST /v1/messages``: the official ``anthropic`` SDK → the gateway → a fake Anthropic (native passthrough) or a
fake OpenAI (translated), both on loopback, → a team's acme sink, delivered to a receiver.

The fake Anthropic is the provider tests' (``test_provider_anthropic.FakeAnthropic``): it checks every request
against the anthropic SDK's request types and answers with events built from its response models. The fake OpenAI
here does the same with the openai SDK's types (``CompletionCreateParams*``, unknown keys refused), and answers
with tool calls, cached-token usage and streamed tool-call deltas, which the shared ``mock_upstream`` does not.
What the gateway sends back on the translated path is checked against the anthropic SDK's response types.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import anthropic.types as at
import pytest
from aiohttp import web
from anthropic.types.message_count_tokens_params import MessageCountTokensParams
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import (CompletionCreateParamsNonStreaming,
                                                        CompletionCreateParamsStreaming)
from pydantic import TypeAdapter

from tests.pipeline.test_provider_anthropic import API_KEY, MODEL, FakeAnthropic

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

CLAUDE_CODE = json.loads((Path(__file__).parents[1] / "fixtures" / "claude_code_request.json").read_text())
SINK_TOKEN = "acme-sink-token-messages"
_OPENAI_REQUEST = {False: TypeAdapter(CompletionCreateParamsNonStreaming),
                   True: TypeAdapter(CompletionCreateParamsStreaming)}
_STREAM_EVENT = TypeAdapter(at.RawMessageStreamEvent)
LITELLM_METADATA = {"session_id": "sess-msg", "tags": ["claude-code"], "trace_name": "cli",
                    "generation_name": "turn-1", "customer": "acme"}


def _keys(typed_dict: Any) -> set[str]:
    return set(typed_dict.__required_keys__) | set(typed_dict.__optional_keys__)


def _materialize(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _materialize(v) for k, v in value.items()}
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return value
    return [_materialize(v) for v in value]


def validate_chat_request(body: dict[str, Any]) -> None:
    """Raise unless ``body`` is a chat completions request by the openai SDK's own types (no unknown keys)."""
    stream = bool(body.get("stream"))
    kind = CompletionCreateParamsStreaming if stream else CompletionCreateParamsNonStreaming
    unknown = set(body) - _keys(kind)
    if unknown:
        raise ValueError(f"unknown request keys {sorted(unknown)}")
    _materialize(_OPENAI_REQUEST[stream].validate_python(body))
    for message in body["messages"]:
        if message["role"] == "tool" and not message.get("tool_call_id"):
            raise ValueError("a tool message needs tool_call_id")


class FakeOpenAI:
    """``POST /v1/chat/completions`` on loopback: tool calls while tools are offered and no tool result came back,
    else an echo of the last user text; usage with 4 cached prompt tokens."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.invalid: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    def _answer(self, body: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]], str]:
        last = body["messages"][-1]
        if body.get("tools") and not any(m["role"] == "tool" for m in body["messages"]):
            calls = [{"id": "call_1", "type": "function", "function": {"name": body["tools"][0]["function"]["name"],
                                                                       "arguments": '{"city": "Paris"}'}}]
            return None, calls, "tool_calls"
        content = last["content"]
        text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
        return f"echo: {text}", [], "stop"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        self.requests.append({"headers": dict(request.headers), "body": body})
        try:
            validate_chat_request(body)
        except ValueError as exc:
            self.invalid.append(str(exc))
            return web.json_response({"error": {"message": str(exc)[:300], "type": "invalid_request_error",
                                                "param": None, "code": None}}, status=400)
        text, calls, finish = self._answer(body)
        usage = {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26,
                 "prompt_tokens_details": {"cached_tokens": 4}}
        if not body.get("stream"):
            answer = ChatCompletion.model_validate({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": "gpt-fake",
                "choices": [{"index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": text, "tool_calls": calls or None}}],
                "usage": usage})
            return web.Response(body=answer.model_dump_json(exclude_none=True), content_type="application/json")
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": "gpt-fake"}
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if text:
            deltas += [{"content": piece} for piece in (text[:6], text[6:])]
        for i, call in enumerate(calls):
            deltas.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                           "function": {"name": call["function"]["name"], "arguments": ""}}]})
            arguments = call["function"]["arguments"]
            deltas += [{"tool_calls": [{"index": i, "function": {"arguments": part}}]}
                       for part in (arguments[:7], arguments[7:])]
        chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": usage})
        for n, chunk in enumerate(chunks):
            ChatCompletionChunk.model_validate(chunk)
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if text == "echo: break" and n == 1:  # an error frame mid-stream, as OpenAI sends one
                await response.write(b'data: {"error": {"message": "upstream fell over", "type": "server_error"}}\n\n')
                return response
        await response.write(b"data: [DONE]\n\n")
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class FakeAnthropicWithCounting(FakeAnthropic):
    """The provider tests' fake Anthropic plus ``POST /v1/messages/count_tokens`` (the request checked against the
    SDK's ``MessageCountTokensParams``; one token per word of text)."""

    async def count_tokens(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.requests.append({"headers": dict(request.headers), "body": body, "path": request.path})
        if request.headers.get("x-api-key") != API_KEY:
            return self._error(401, "authentication_error", "invalid x-api-key")
        unknown = set(body) - _keys(MessageCountTokensParams)
        if unknown:
            self.invalid.append(f"unknown count_tokens keys {sorted(unknown)}")
            return self._error(400, "invalid_request_error", f"unknown keys {sorted(unknown)}")
        words = sum(len(str(m["content"]).split()) for m in body["messages"])
        return web.json_response(at.MessageTokensCount(input_tokens=words).model_dump())

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropicWithCounting()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


def models(fake: FakeAnthropic, fake_openai: FakeOpenAI) -> list[dict[str, Any]]:
    return [
        {"model_name": "claude", "litellm_params": {
            "model": f"anthropic/{MODEL}", "api_base": fake.url, "api_key": API_KEY, "timeout": 10,
            "input_cost_per_token": 0.001, "output_cost_per_token": 0.002, "cache_read_input_token_cost": 0.0001,
            "extra_headers": {"anthropic-beta": "configured-beta"}}},
        {"model_name": "gpt", "litellm_params": {
            "model": "openai/gpt-fake", "api_base": fake_openai.url, "api_key": "sk-openai-upstream", "timeout": 10,
            "input_cost_per_token": 0.001, "output_cost_per_token": 0.002}},
    ]


def client(gw: Any, key: str, **kwargs: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(gw.client.base_url).rstrip("/"), api_key=key, max_retries=0,
                                    timeout=20, **kwargs)


async def team_key(gw: Any, vars_for: Any, team_id: str, **key: Any) -> str:
    assert (await gw.admin("POST", "/team/new", json={"team_id": team_id})).status_code == 200
    response = await gw.admin("POST", f"/team/{team_id}/callback", json={
        "callback_name": "acme", "callback_vars": vars_for(team_id, token=SINK_TOKEN)})
    assert response.status_code == 200, response.text
    return await gw.new_key(team_id=team_id, key_alias=f"{team_id}-key", **key)


async def events_for(receiver: Any, team_id: str, count: int) -> list[dict[str, Any]]:
    assert await receiver.wait_for_async(lambda: len(receiver.events(f"/dest/{team_id}")) >= count)
    return sorted(receiver.events(f"/dest/{team_id}"), key=lambda e: e["startTime"])


async def test_native_anthropic_plain_and_streamed_with_the_event_in_the_teams_sink(
        fake, fake_openai, receiver, vars_for, make_config, start) -> None:
    async with start(make_config(models=models(fake, fake_openai))) as gw:
        key = await team_key(gw, vars_for, "msg-team")
        sdk = client(gw, key, default_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
        answer = await sdk.messages.create(
            model="claude", max_tokens=100, system="Be brief.",
            messages=[{"role": "user", "content": "hello there"}],
            metadata={"user_id": "end-user-9"}, extra_body={"litellm_metadata": LITELLM_METADATA})
        assert answer.content[0].text == "You said: hello there" and answer.stop_reason == "end_turn"
        assert (answer.usage.input_tokens, answer.usage.output_tokens) == (11, 7)
        assert answer.usage.cache_read_input_tokens == 5 and answer.model == MODEL
        sent = fake.requests[-1]
        # native: the client's request as it came, but the upstream's model name, Anthropic's metadata only
        assert sent["body"]["model"] == MODEL and sent["body"]["system"] == "Be brief."
        assert sent["body"]["metadata"] == {"user_id": "end-user-9"} and "litellm_metadata" not in sent["body"]
        assert sent["headers"]["anthropic-beta"] == "configured-beta,prompt-caching-2024-07-31"
        assert sent["headers"]["x-api-key"] == API_KEY and key not in json.dumps(sent["headers"])
        async with sdk.messages.stream(model="claude", max_tokens=100,
                                       messages=[{"role": "user", "content": "stream me"}]) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        assert "".join(pieces) == "You said: stream me" and final.usage.output_tokens == 7
        assert fake.invalid == []
        plain, streamed = await events_for(receiver, "msg-team", 2)
    for event in (plain, streamed):
        assert event["call_type"] == "anthropic_messages" and event["status"] == "success"
        assert event["custom_llm_provider"] == "anthropic" and event["model_group"] == "claude"
        # usage as LiteLLM counts Anthropic's: cache reads and writes are prompt tokens
        assert (event["prompt_tokens"], event["completion_tokens"], event["total_tokens"]) == (19, 7, 26)
        assert event["response_cost"] == pytest.approx(11 * 0.001 + 5 * 0.0001 + 3 * 0.001 + 7 * 0.002)
        assert event["metadata"]["user_api_key_alias"] == "msg-team-key"
        assert SINK_TOKEN not in json.dumps(event)
    assert plain["stream"] is False and streamed["stream"] is True
    assert plain["messages"] == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "hello there"}]
    assert plain["response"]["content"] == [{"type": "text", "text": "You said: hello there"}]
    assert streamed["response"]["content"] == [{"type": "text", "text": "You said: stream me"}]
    assert plain["model_parameters"] == {"max_tokens": 100}  # metadata is attribution, not a parameter
    assert plain["end_user"] == "end-user-9" and plain["request_tags"] == ["claude-code"]
    meta = plain["metadata"]
    assert (meta["session_id"], meta["trace_name"], meta["generation_name"]) == ("sess-msg", "cli", "turn-1")
    assert meta["requester_metadata"] == {"customer": "acme"}
    # negative control: the streamed call carried no attribution of its own
    assert streamed["end_user"] is None and streamed["metadata"]["session_id"] is None


async def test_claude_code_request_native_and_translated(fake, fake_openai, receiver, vars_for, make_config,
                                                         start) -> None:
    """Claude Code's request shape (system blocks with cache_control, tools, thinking, a tool round trip) goes
    through untouched to Anthropic, and translated to a valid chat request for an OpenAI model."""
    async with start(make_config(models=models(fake, fake_openai))) as gw:
        key = await team_key(gw, vars_for, "cc-team")
        sdk = client(gw, key)
        request = copy.deepcopy(CLAUDE_CODE)
        async with sdk.messages.stream(**{k: v for k, v in request.items() if k != "stream"}) as stream:
            final = await stream.get_final_message()
        assert fake.invalid == []
        sent = fake.requests[-1]["body"]
        assert {k: v for k, v in sent.items() if k != "model"} == {k: v for k, v in CLAUDE_CODE.items()
                                                                   if k != "model"}
        assert [b.type for b in final.content] == ["thinking", "text"]
        assert final.content[0].signature == "sig-abc123" and final.content[1].text == "You said: go on"
        # the same conversation for an OpenAI model
        request["model"] = "gpt"
        async with sdk.messages.stream(**{k: v for k, v in request.items() if k != "stream"}) as stream:
            translated = await stream.get_final_message()
        assert fake_openai.invalid == []
        chat = fake_openai.requests[-1]["body"]
        assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "tool", "user"]
        assert chat["messages"][0]["content"].startswith("You are Claude Code")
        assistant = chat["messages"][2]
        assert assistant["content"] == "Let me look at the test file."
        assert assistant["tool_calls"] == [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {
            "name": "Read", "arguments": '{"file_path":"/home/dev/project/tests/test_utils.py"}'}}]
        assert chat["messages"][3]["tool_call_id"] == "toolu_01A09q90qw90lq917835lq9"
        assert [t["function"]["name"] for t in chat["tools"]] == ["Bash", "Read", "Edit"]
        assert chat["user"] == CLAUDE_CODE["metadata"]["user_id"] and "metadata" not in chat
        assert "thinking" not in chat and chat["stream_options"] == {"include_usage": True}
        assert translated.content[0].text == "echo: go on" and translated.stop_reason == "end_turn"
        assert (translated.usage.input_tokens, translated.usage.cache_read_input_tokens) == (16, 4)
        native, via_chat = await events_for(receiver, "cc-team", 2)
    assert native["call_type"] == via_chat["call_type"] == "anthropic_messages"
    assert native["messages"][0]["role"] == "system" and len(native["messages"]) == 4
    assert "system" not in native["model_parameters"] and "tools" not in native["model_parameters"]
    assert native["model_parameters"]["thinking"] == CLAUDE_CODE["thinking"]
    assert native["end_user"] == CLAUDE_CODE["metadata"]["user_id"]
    assert via_chat["custom_llm_provider"] == "openai"
    assert (via_chat["prompt_tokens"], via_chat["completion_tokens"]) == (20, 6)
    assert via_chat["response_cost"] == pytest.approx(20 * 0.001 + 6 * 0.002)


async def test_translated_tools_round_trip_plain_and_streamed(fake, fake_openai, make_config, start) -> None:
    weather = {"name": "get_weather", "description": "Weather in a city",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    async with start(make_config(models=models(fake, fake_openai))) as gw:
        sdk = client(gw, await gw.new_key())
        question = {"role": "user", "content": [
            {"type": "text", "text": "weather here?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}
        first = await sdk.messages.create(model="gpt", max_tokens=50, messages=[question], tools=[weather],
                                          tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                          stop_sequences=["END"])
        sent = fake_openai.requests[-1]["body"]
        assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
        assert sent["stop"] == ["END"] and sent["max_tokens"] == 50
        assert sent["messages"][0]["content"][1] == {"type": "image_url",
                                                     "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        at.Message.model_validate(first.model_dump(), strict=True)
        assert first.stop_reason == "tool_use"
        (use,) = first.content
        assert (use.type, use.id, use.name, use.input) == ("tool_use", "call_1", "get_weather", {"city": "Paris"})
        history = [question, {"role": "assistant", "content": [use.model_dump()]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}]}]
        second = await sdk.messages.create(model="gpt", max_tokens=50, messages=history, tools=[weather])
        assert second.content[0].text == "echo: sunny"
        assert fake_openai.requests[-1]["body"]["messages"][-1] == {"role": "tool", "tool_call_id": "call_1",
                                                                   "content": "sunny"}
        # streamed: tool_use arrives as content_block_start + input_json_delta events, checked by the SDK's types
        raw = await gw.client.post("/v1/messages", headers={"x-api-key": await gw.new_key()}, json={
            "model": "gpt", "max_tokens": 50, "stream": True, "messages": [question], "tools": [weather]})
        assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in raw.text.splitlines() if line.startswith("data: ")]
        for event in events:
            _STREAM_EVENT.validate_python(event) if event["type"] != "ping" else None
        assert [e["type"] for e in events] == ["message_start", "ping", "content_block_start", "content_block_delta",
                                               "content_block_delta", "content_block_stop", "message_delta",
                                               "message_stop"]
        assert events[2]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}
        assert "".join(e["delta"]["partial_json"] for e in events[3:5]) == '{"city": "Paris"}'
        assert events[6]["delta"]["stop_reason"] == "tool_use" and events[6]["usage"]["output_tokens"] == 6
        async with sdk.messages.stream(model="gpt", max_tokens=50, messages=[question], tools=[weather]) as stream:
            final = await stream.get_final_message()
        assert final.content[0].input == {"city": "Paris"} and final.stop_reason == "tool_use"
        assert fake_openai.invalid == []


async def test_translated_plain_answer_is_logged_as_the_client_received_it(fake, fake_openai, receiver, vars_for,
                                                                          make_config, start) -> None:
    """The translated message is built once: the event's ``response`` is the very JSON the client received (the
    pipeline logs the endpoint's own object instead of decoding the answer's bytes again)."""
    async with start(make_config(models=models(fake, fake_openai))) as gw:
        key = await team_key(gw, vars_for, "plain-team")
        raw = await gw.client.post("/v1/messages", headers={"x-api-key": key}, json={
            "model": "gpt", "max_tokens": 20, "messages": [{"role": "user", "content": "log me"}]})
        assert raw.status_code == 200, raw.text
        (event,) = await events_for(receiver, "plain-team", 1)
    answer = raw.json()
    at.Message.model_validate(answer, strict=True)
    assert answer["content"] == [{"type": "text", "text": "echo: log me"}]
    assert event["response"] == answer
    assert event["completion_tokens"] == answer["usage"]["output_tokens"]


async def test_errors_are_anthropic_shaped_and_refused_before_the_upstream(fake, fake_openai, make_config,
                                                                           start) -> None:
    async with start(make_config(models=models(fake, fake_openai))) as gw:
        key = await gw.new_key(models=["claude"])
        sdk = client(gw, key)
        with pytest.raises(anthropic.AuthenticationError) as denied:
            await client(gw, "sk-wrong").messages.create(model="claude", max_tokens=5,
                                                         messages=[{"role": "user", "content": "hi"}])
        assert denied.value.body["type"] == "error" and denied.value.body["error"]["type"] == "authentication_error"
        anonymous = await gw.client.post("/v1/messages", json={"model": "claude", "max_tokens": 5,
                                                               "messages": [{"role": "user", "content": "hi"}]})
        assert anonymous.status_code == 401 and "x-api-key" in anonymous.json()["error"]["message"]
        with pytest.raises(anthropic.PermissionDeniedError) as forbidden:
            await sdk.messages.create(model="gpt", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert "gpt" in forbidden.value.body["error"]["message"]
        with pytest.raises(anthropic.BadRequestError) as unknown:
            await sdk.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert unknown.value.body["error"]["type"] == "invalid_request_error"
        for body, field in (({"messages": []}, "messages"), ({"max_tokens": 0}, "max_tokens"),
                            ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
                            ({"tool_choice": {"type": "sometimes"}}, "tool_choice")):
            response = await gw.client.post("/messages", headers={"x-api-key": key}, json={
                "model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **body})
            assert response.status_code == 400, response.text
            assert response.json()["type"] == "error" and response.json()["error"]["message"].startswith(field)
        bad_beta = await gw.client.post("/v1/messages", headers={"x-api-key": key, "anthropic-beta": "a\tb"},
                                        json={"model": "claude", "max_tokens": 5,
                                              "messages": [{"role": "user", "content": "hi"}]})
        assert bad_beta.status_code == 400 and "anthropic-beta" in bad_beta.json()["error"]["message"]
        assert fake.requests == []  # all refused before any upstream call
        with pytest.raises(anthropic.InternalServerError) as busy:
            await sdk.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "overloaded"}])
        assert busy.value.status_code == 529 and busy.value.body["error"]["type"] == "overloaded_error"
        with pytest.raises(anthropic.APIError) as broken:
            async with sdk.messages.stream(model="claude", max_tokens=5,
                                           messages=[{"role": "user", "content": "break"}]) as stream:
                async for _ in stream:
                    pass
        assert "Overloaded mid-stream" in str(broken.value)
        # negative controls: Authorization: Bearer works as well as x-api-key, and /messages without /v1
        bearer = anthropic.AsyncAnthropic(base_url=str(gw.client.base_url), auth_token=key, max_retries=0)
        ok = await bearer.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert ok.content[0].text == "You said: hi"
        plain = await gw.client.post("/messages", headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                                     json={"model": "claude", "max_tokens": 5,
                                           "messages": [{"role": "user", "content": "hi"}]})
        assert plain.status_code == 200 and plain.json()["content"][0]["text"] == "You said: hi"


async def test_translated_answers_are_anthropic_types_and_a_broken_stream_ends_with_an_error_event(
        fake, fake_openai, receiver, vars_for, make_config, start) -> None:
    async with start(make_config(models=models(fake, fake_openai))) as gw:
        key = await team_key(gw, vars_for, "broken-team")
        raw = await gw.client.post("/v1/messages", headers={"x-api-key": key}, json={
            "model": "gpt", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]})
        message = at.Message.model_validate(raw.json(), strict=True)  # the gateway's own JSON, by the SDK's types
        assert (message.content[0].text, message.stop_reason, message.usage.output_tokens) == ("echo: hi", "end_turn", 6)
        with pytest.raises(anthropic.APIError) as broken:
            async with client(gw, key).messages.stream(model="gpt", max_tokens=9,
                                                       messages=[{"role": "user", "content": "break"}]) as stream:
                async for _ in stream:
                    pass
        assert "upstream fell over" in str(broken.value)
        ok, failed = await events_for(receiver, "broken-team", 2)
    assert ok["status"] == "success" and failed["status"] == "failure"
    assert failed["error_str"] == "upstream fell over" and failed["call_type"] == "anthropic_messages"


async def test_translation_refuses_what_a_chat_model_cannot_take(fake, fake_openai, make_config, start) -> None:
    async with start(make_config(models=models(fake, fake_openai))) as gw:
        key = await gw.new_key()
        base = {"model": "gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        for extra, named in (({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0"),
                             ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
                             ({"messages": [{"role": "user", "content": [
                                 {"type": "document", "source": {"type": "text", "data": "x",
                                                                 "media_type": "text/plain"}}]}]}, "messages.0")):
            response = await gw.client.post("/v1/messages", headers={"x-api-key": key}, json={**base, **extra})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["message"].startswith(named)
        assert fake_openai.requests == []
        ok = await gw.client.post("/v1/messages", headers={"x-api-key": key}, json=base)
        assert ok.status_code == 200 and ok.json()["content"] == [{"type": "text", "text": "echo: hi"}]


def test_event_body_never_carries_base64_payloads() -> None:
    from sluicegate.api.messages import log_body

    data = "iVBORw0KGgoAAAANSUhEUg=="
    body = {"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "sys"}], "messages": [
        {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": data}},
                                     {"type": "tool_result", "tool_use_id": "t", "content": [
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                                                      "data": data}}]}]}],
        "litellm_metadata": {"tags": ["x"]}}
    logged = log_body(body)
    assert data not in json.dumps(logged) and "[image/png: 16 bytes]" in json.dumps(logged)
    assert "litellm_metadata" not in logged and logged["messages"][0] == {"role": "system", "content": body["system"]}
    assert body["messages"][0]["content"][0]["source"]["data"] == data  # the request itself is untouched


async def test_mock_response_models_answer_messages_too(make_config, start) -> None:
    cfg = make_config(models=[{"model_name": "m", "litellm_params": {"model": "openai/m", "mock_response": "hi you"}}])
    async with start(cfg) as gw:
        sdk = client(gw, await gw.new_key())
        answer = await sdk.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert answer.content[0].text == "hi you"
        async with sdk.messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as s:
            assert "".join([t async for t in s.text_stream]) == "hi you"


async def test_redaction_covers_system_prompt_answer_blocks_and_streams(fake, fake_openai, receiver, vars_for,
                                                                       make_config, start) -> None:
    weather = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    cfg = make_config(models=models(fake, fake_openai), litellm={"turn_off_message_logging": True})
    async with start(cfg) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("red")}]})
        sdk = client(gw, key)
        answer = await sdk.messages.create(model="claude", max_tokens=50, system="secret system prompt",
                                           tools=[weather], messages=[{"role": "user", "content": "secret question"}])
        assert answer.content[1].input == {"city": "Paris"}  # the client gets everything
        async with sdk.messages.stream(model="claude", max_tokens=50, thinking={"type": "enabled",
                                                                                "budget_tokens": 20},
                                       messages=[{"role": "user", "content": "secret stream"}]) as stream:
            await stream.get_final_message()
        events = await events_for(receiver, "red", 2)
    text = json.dumps(events)
    for secret in ("secret system prompt", "secret question", "secret stream", "You said", "Paris", "First, the"):
        assert secret not in text, secret
    plain, streamed = events
    assert [b["type"] for b in plain["response"]["content"]] == ["text", "tool_use", "tool_use"]
    assert plain["response"]["content"][1]["input"] == "redacted-by-sluicegate"
    assert [b["type"] for b in streamed["response"]["content"]] == ["thinking", "text"]
    assert plain["prompt_tokens"] == 19 and streamed["completion_tokens"] == 7  # usage is kept


class FakeBedrockInvoke:
    """Bedrock Runtime's InvokeModel routes for Claude on loopback: the SigV4 signature is recomputed with botocore
    (the bedrock provider tests' ``verify_sigv4``); the body must be Anthropic's Messages body as Bedrock takes it
    (``anthropic_version: bedrock-2023-05-31``, no ``model`` or ``stream``), checked with the anthropic SDK's
    request types; streams are event-stream ``chunk`` messages framed and checked by botocore's decoder."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.invalid: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        from tests.pipeline.test_provider_anthropic import validate_request
        from tests.pipeline.test_provider_bedrock import ACCESS_KEY, SECRET_KEY, verify_sigv4

        raw = await request.read()
        body = json.loads(raw)
        self.requests.append({"path": request.path, "body": body})
        try:
            verify_sigv4(request, raw, "bedrock", {ACCESS_KEY: (SECRET_KEY, None)})
        except PermissionError as exc:
            return web.json_response({"message": str(exc)}, status=403, headers={"x-amzn-errortype": str(exc)})
        try:
            if body.pop("anthropic_version", None) != "bedrock-2023-05-31" or "model" in body or "stream" in body:
                raise ValueError("InvokeModel wants anthropic_version bedrock-2023-05-31, no model, no stream")
            body.pop("anthropic_beta", None)
            validate_request({**body, "model": "claude-on-bedrock"})
        except Exception as exc:  # pydantic's ValidationError or ours
            self.invalid.append(str(exc))
            return web.json_response({"message": str(exc)[:300]}, status=400,
                                     headers={"x-amzn-errortype": "ValidationException"})
        message = FakeAnthropic()._message(body)
        if request.path.endswith("/invoke"):
            return web.Response(body=message.model_dump_json(exclude_none=True), content_type="application/json")
        from tests.pipeline.test_provider_bedrock import frame

        response = web.StreamResponse(headers={"content-type": "application/vnd.amazon.eventstream"})
        await response.prepare(request)
        start = message.model_copy(update={"content": [], "stop_reason": None})
        events: list[Any] = [at.RawMessageStartEvent(type="message_start", message=start)]
        for index, block in enumerate(message.content):
            events.append(at.RawContentBlockStartEvent(type="content_block_start", index=index, content_block=
                                                       at.TextBlock(type="text", text="")))
            events.append(at.RawContentBlockDeltaEvent(type="content_block_delta", index=index,
                                                       delta=at.TextDelta(type="text_delta", text=block.text)))
            events.append(at.RawContentBlockStopEvent(type="content_block_stop", index=index))
        events.append(at.RawMessageDeltaEvent(type="message_delta", delta={"stop_reason": "end_turn"},
                                              usage=at.MessageDeltaUsage(output_tokens=7)))
        events.append(at.RawMessageStopEvent(type="message_stop"))
        for event in events:
            chunk = base64.b64encode(event.model_dump_json(exclude_none=True).encode()).decode()
            await response.write(frame({":event-type": "chunk", ":content-type": "application/json",
                                        ":message-type": "event"}, json.dumps({"bytes": chunk}).encode()))
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/model/{model_id}/invoke", self.invoke)
        app.router.add_post("/model/{model_id}/invoke-with-response-stream", self.invoke)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_bedrock_claude_through_invoke_model_plain_and_streamed(receiver, vars_for, make_config,
                                                                     start) -> None:
    from tests.pipeline.test_provider_bedrock import ACCESS_KEY, MODEL_ID, REGION, SECRET_KEY

    fake_bedrock = FakeBedrockInvoke()
    await fake_bedrock.start()
    try:
        cfg = make_config(models=[{"model_name": "bedrock-claude", "litellm_params": {
            "model": f"bedrock/{MODEL_ID}", "aws_bedrock_runtime_endpoint": fake_bedrock.url,
            "aws_region_name": REGION, "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY,
            "timeout": 10, "input_cost_per_token": 0.001, "output_cost_per_token": 0.002}}])
        async with start(cfg) as gw:
            key = await team_key(gw, vars_for, "bedrock-team")
            sdk = client(gw, key, default_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})
            request = {k: v for k, v in CLAUDE_CODE.items() if k not in ("model", "stream")}
            answer = await sdk.messages.create(model="bedrock-claude", **request)
            assert [b.type for b in answer.content] == ["thinking", "text"] and answer.content[1].text == "You said: go on"
            sent = fake_bedrock.requests[-1]
            assert sent["path"].endswith("/invoke")
            assert sent["body"]["system"] == CLAUDE_CODE["system"]  # cache_control marks kept: native, not Converse
            async with sdk.messages.stream(model="bedrock-claude", max_tokens=20,
                                           messages=[{"role": "user", "content": "hi there"}]) as stream:
                pieces = [t async for t in stream.text_stream]
            assert "".join(pieces) == "You said: hi there"
            assert fake_bedrock.requests[-1]["path"].endswith("/invoke-with-response-stream")
            assert fake_bedrock.invalid == []
            plain, streamed = await events_for(receiver, "bedrock-team", 2)
    finally:
        await fake_bedrock.stop()
    for event in (plain, streamed):
        assert event["call_type"] == "anthropic_messages" and event["custom_llm_provider"] == "bedrock"
        assert event["status"] == "success" and event["prompt_tokens"] == 19
    assert streamed["response"]["content"] == [{"type": "text", "text": "You said: hi there"}]


async def test_vertex_claude_native_plain_and_streamed(receiver, vars_for, make_config, start, tmp_path,
                                                       monkeypatch) -> None:
    """Claude on Vertex AI (the gemini provider tests' fake Google, which checks the bearer token, the rawPredict
    paths and the body against the anthropic SDK's request types): the client's request natively."""
    from tests.pipeline.test_provider_gemini import CLAUDE, LOCATION, PROJECT, FakeGoogle, vertex_model

    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "VERTEXAI_CREDENTIALS", "VERTEXAI_PROJECT", "VERTEXAI_LOCATION",
                 "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    google = FakeGoogle()
    await google.start()
    try:
        key_file = tmp_path / "adc.json"
        key_file.write_text(json.dumps(google.service_account(project=None)))
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        monkeypatch.setenv("VERTEXAI_PROJECT", PROJECT)
        async with start(make_config(models=[vertex_model(google, None, "vertex-claude", CLAUDE)])) as gw:
            key = await team_key(gw, vars_for, "vertex-team")
            sdk = client(gw, key)
            answer = await sdk.messages.create(model="vertex-claude", max_tokens=50, system=[
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                messages=[{"role": "user", "content": "hello"}])
            assert answer.content[0].text == "Claude says: hello" and answer.id == "msg_vertex_1"
            async with sdk.messages.stream(model="vertex-claude", max_tokens=50,
                                           messages=[{"role": "user", "content": "again"}]) as stream:
                assert "".join([t async for t in stream.text_stream]) == "Claude says: again"
            assert google.invalid == []
            base = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/anthropic/models/{CLAUDE}"
            assert [r["path"] for r in google.requests] == [f"{base}:rawPredict", f"{base}:streamRawPredict"]
            assert google.requests[0]["body"]["system"][0]["cache_control"] == {"type": "ephemeral"}
            plain, streamed = await events_for(receiver, "vertex-team", 2)
    finally:
        await google.stop()
    assert [(e["call_type"], e["custom_llm_provider"], e["prompt_tokens"], e["completion_tokens"])
            for e in (plain, streamed)] == [("anthropic_messages", "vertex_ai", 9, 4)] * 2


def test_stream_translation_of_reasoning_text_and_parallel_tool_calls_is_valid_anthropic() -> None:
    """OpenAI chunks with reasoning, text and two tool calls → events the anthropic SDK's types accept, blocks
    opened and closed in order; the assembler rebuilds the message the SDK would."""
    from sluicegate.providers.messages_adapter import MessageAssembler, StreamTranslator

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    translator, assembler = StreamTranslator("m"), MessageAssembler()
    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "think"}),
              chunk({"content": "Hi"}),
              chunk({"tool_calls": [{"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":1}'}}]}),
              chunk({"tool_calls": [{"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}),
              chunk({}, "tool_calls"),
              {"id": "c1", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 3,
                                                    "prompt_tokens_details": {"cached_tokens": 2}}}]
    events = [e for c in chunks for e in translator.feed(c)] + translator.end()
    for event in events:
        if event["type"] != "ping":
            _STREAM_EVENT.validate_python(event)
        assembler.feed_event(event)
    assert [e["type"] for e in events if e["type"].startswith("content_block_st")] == [
        "content_block_start", "content_block_stop"] * 4
    message = at.Message.model_validate(assembler.result())
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[2].input == {"x": 1} and message.content[3].name == "g"
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (8, 2, 3)
    # negative control: a stream without tool calls ends its turn instead
    plain = StreamTranslator("m")
    plain.feed(chunk({"content": "x"}, "tool_calls"))
    assert plain.end()[-2]["delta"]["stop_reason"] == "end_turn"


async def test_count_tokens_asks_anthropic_and_names_the_provider_elsewhere(fake, fake_openai, make_config,
                                                                           start) -> None:
    async with start(make_config(models=models(fake, fake_openai))) as gw:
        sdk = client(gw, await gw.new_key())
        counted = await sdk.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "one two three"}],
                                                  extra_body={"litellm_metadata": {"tags": ["x"]}})
        assert counted.input_tokens == 3 and fake.invalid == []
        sent = fake.requests[-1]
        assert sent["path"] == "/v1/messages/count_tokens" and sent["body"]["model"] == MODEL
        assert "litellm_metadata" not in sent["body"] and sent["headers"]["x-api-key"] == API_KEY
        with pytest.raises(anthropic.BadRequestError) as refused:
            await sdk.messages.count_tokens(model="gpt", messages=[{"role": "user", "content": "hi"}])
        message = refused.value.body["error"]["message"]
        assert "openai" in message and "/v1/messages/count_tokens" in message
        assert fake_openai.requests == []


async def test_litellm_keys_in_anthropic_metadata_are_attribution_and_only_user_id_goes_upstream(
        fake, fake_openai, receiver, vars_for, make_config, start) -> None:
    async with start(make_config(models=models(fake, fake_openai))) as gw:
        sdk = client(gw, await team_key(gw, vars_for, "meta-team"))
        await sdk.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                                  metadata={"user_id": "u-1", "session_id": "s-1", "tags": ["t"]})  # type: ignore
        assert fake.requests[-1]["body"]["metadata"] == {"user_id": "u-1"} and fake.invalid == []
        await sdk.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                                  metadata={"session_id": "s-2"})  # type: ignore
        assert "metadata" not in fake.requests[-1]["body"]
        first, second = await events_for(receiver, "meta-team", 2)
    assert (first["end_user"], first["metadata"]["session_id"], first["request_tags"]) == ("u-1", "s-1", ["t"])
    assert (second["end_user"], second["metadata"]["session_id"]) == (None, "s-2")
