"""The ``anthropic`` provider end to end: the official ``openai`` SDK → the gateway → a fake Anthropic on loopback.

The fake speaks the Messages API: it checks every request it receives against the official ``anthropic`` SDK's
request types (``MessageCreateParams*``, block and tool types, unknown keys refused) and builds its answers and
stream events from the SDK's response models, so a translation the real API would refuse fails here too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic.types as at
import openai
import pytest
from aiohttp import web
from anthropic.lib._parse._transform import transform_schema
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming, MessageCreateParamsStreaming
from pydantic import TypeAdapter

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

API_KEY = "sk-ant-test-key"
MODEL = "claude-test-1"
_REQUEST = {False: TypeAdapter(MessageCreateParamsNonStreaming), True: TypeAdapter(MessageCreateParamsStreaming)}
_BLOCKS = {"text": at.TextBlockParam, "image": at.ImageBlockParam, "tool_use": at.ToolUseBlockParam,
           "tool_result": at.ToolResultBlockParam, "thinking": at.ThinkingBlockParam,
           "redacted_thinking": at.RedactedThinkingBlockParam}


def _keys(typed_dict: Any) -> set[str]:
    return set(typed_dict.__required_keys__) | set(typed_dict.__optional_keys__)


def _materialize(value: Any) -> Any:
    """Pydantic validates iterables lazily: walk everything so every nested item is checked."""
    if isinstance(value, dict):
        return {k: _materialize(v) for k, v in value.items()}
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return value
    return [_materialize(v) for v in value]


def validate_request(body: dict[str, Any]) -> None:
    """Raise ValueError unless ``body`` is a Messages API request by the SDK's own types (no unknown keys)."""
    stream = bool(body.get("stream"))
    kind = MessageCreateParamsStreaming if stream else MessageCreateParamsNonStreaming
    unknown = set(body) - _keys(kind)
    if unknown:
        raise ValueError(f"unknown request keys {sorted(unknown)}")
    _materialize(_REQUEST[stream].validate_python(body))
    for message in body["messages"]:
        content = message["content"]
        for block in [] if isinstance(content, str) else content:
            allowed = _keys(_BLOCKS[block["type"]])
            if set(block) - allowed:
                raise ValueError(f"unknown keys in a {block['type']} block: {sorted(set(block) - allowed)}")
            if block["type"] == "image":
                source_type = at.Base64ImageSourceParam if block["source"]["type"] == "base64" else at.URLImageSourceParam
                if set(block["source"]) - _keys(source_type):
                    raise ValueError("unknown keys in an image source")
    for tool in body.get("tools") or ():
        if set(tool) - _keys(at.ToolParam):
            raise ValueError(f"unknown tool keys {sorted(set(tool) - _keys(at.ToolParam))}")
    output_format = (body.get("output_config") or {}).get("format")
    if output_format is not None and set(output_format) - _keys(at.JSONOutputFormatParam):
        raise ValueError("unknown keys in output_config.format")
    if output_format is not None:
        check_structured_schema(output_format["schema"])
    for tool in body.get("tools") or ():
        if tool.get("input_schema", {}).get("type") != "object":  # the API's rule for a custom tool
            raise ValueError("tools.0.custom.input_schema.type: Field required (must be 'object')")
    thinking = body.get("thinking")
    if thinking and thinking.get("type") == "enabled" and body["max_tokens"] <= thinking["budget_tokens"]:
        raise ValueError("max_tokens must be greater than thinking.budget_tokens")
    if thinking and thinking.get("type") == "enabled" and (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        raise ValueError("Thinking may not be enabled when tool_choice forces tool use.")
    for message in body["messages"]:  # with thinking on, an assistant turn that calls tools starts with thinking
        content = message["content"]
        kinds = [] if isinstance(content, str) else [b["type"] for b in content]
        if thinking and thinking.get("type") == "enabled" and message["role"] == "assistant" and "tool_use" in kinds \
                and kinds[0] not in ("thinking", "redacted_thinking"):
            raise ValueError("Expected `thinking` or `redacted_thinking`, but found `tool_use`.")
    if isinstance(body.get("system"), list):
        for block in body["system"]:
            if set(block) - _keys(at.TextBlockParam):
                raise ValueError("unknown keys in a system block")


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def check_structured_schema(schema: dict[str, Any]) -> None:
    """Anthropic's rules for ``output_config.format.schema``. The official SDK's ``transform_schema`` makes a
    schema acceptable by folding every keyword the API does not take into a description: a schema it must fold
    anything of is one the API refuses. Beyond that: every object has ``additionalProperties: false``, and every
    ``$ref`` points into the root's ``$defs`` without a cycle."""
    def descriptions(node: Any) -> set[str]:
        return {d["description"] for d in _walk(node) if isinstance(d.get("description"), str)}

    folded = descriptions(transform_schema(schema)) - descriptions(schema)
    if folded:
        raise ValueError(f"output_config.format.schema: unsupported keywords {sorted(folded)}")
    defs = schema.get("$defs") or {}
    for node in _walk(schema):
        kinds = node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]
        if "object" in kinds and node.get("additionalProperties") is not False:
            raise ValueError("output_config.format.schema: objects must set additionalProperties to false")
        ref = node.get("$ref")
        if isinstance(ref, str) and (not ref.startswith("#/$defs/") or ref[8:] not in defs):
            raise ValueError(f"output_config.format.schema: unresolvable $ref {ref}")

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in stack:
            raise ValueError(f"output_config.format.schema: recursive schemas are not supported ({name})")
        for node in _walk(defs[name]):
            if isinstance(node.get("$ref"), str):
                visit(node["$ref"][8:], (*stack, name))

    for name in defs:
        visit(name, ())


def sample(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """An instance of ``schema`` (refs resolved), as constrained decoding would produce one."""
    if "$ref" in schema:
        return sample(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in schema:
        return sample(schema["anyOf"][0], defs)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if kind == "object":
        return {k: sample(v, defs) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample(schema["items"], defs)] if "items" in schema else []
    return {"string": "Paris", "integer": 21, "number": 21.5, "boolean": True, "null": None}[kind]


def last_text(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(b.get("text", "") for b in content if b.get("type") == "text")


class FakeAnthropic:
    """``POST /v1/messages`` on loopback. What the last user turn says picks the behaviour."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.invalid: list[str] = []
        self.gate = asyncio.Event()  # the slow stream waits here after its first delta
        self.url = ""
        self._runner: web.AppRunner | None = None

    def _usage(self) -> at.Usage:
        return at.Usage(input_tokens=11, output_tokens=7, cache_read_input_tokens=5, cache_creation_input_tokens=3)

    def _message(self, body: dict[str, Any]) -> at.Message:
        text = last_text(body)
        last = body["messages"][-1]["content"]
        got_result = not isinstance(last, str) and any(b.get("type") == "tool_result" for b in last)
        forced = (body.get("tool_choice") or {}).get("name") == "json_tool_call" or (
            body.get("thinking") and any(t["name"] == "json_tool_call" for t in body.get("tools") or ()))
        if forced:
            content = [at.ToolUseBlock(type="tool_use", id="toolu_json", name="json_tool_call",
                                       input={"city": "Paris", "temp": 21})]
            stop = "tool_use"
        elif body.get("output_config"):
            schema = body["output_config"]["format"]["schema"]
            content = [at.TextBlock(type="text", text=json.dumps(sample(schema, schema.get("$defs") or {})))]
            stop = "end_turn"
        elif body.get("tools") and not got_result:
            content: list[Any] = [at.TextBlock(type="text", text="Let me check."),
                                  at.ToolUseBlock(type="tool_use", id="toolu_1", name="get_weather",
                                                  input={"city": "Paris"}),
                                  at.ToolUseBlock(type="tool_use", id="toolu_2", name="get_weather",
                                                  input={"city": "Rome"})]
            stop = "tool_use"
        else:
            content, stop = [at.TextBlock(type="text", text=f"You said: {text}")], "end_turn"
        if text == "long":
            stop = "max_tokens"
        if (body.get("thinking") or {}).get("type") == "enabled":
            content = [at.ThinkingBlock(type="thinking", thinking="First, the weather. Then the answer.",
                                        signature="sig-abc123"), *content]
        return at.Message(id="msg_fake_1", type="message", role="assistant", model=MODEL, content=content,
                          stop_reason=stop, stop_sequence=None, usage=self._usage())

    async def messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        self.requests.append({"headers": dict(request.headers), "body": body})
        if request.headers.get("x-api-key") != API_KEY:
            return self._error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") != "2023-06-01":
            return self._error(400, "invalid_request_error", "anthropic-version header is required")
        try:
            validate_request(body)
        except ValueError as exc:
            self.invalid.append(str(exc))
            return self._error(400, "invalid_request_error", str(exc)[:500])
        if last_text(body) == "overloaded":
            return self._error(529, "overloaded_error", "Overloaded")
        if not body.get("stream"):
            return web.Response(body=self._message(body).model_dump_json(exclude_none=True),
                                content_type="application/json")
        return await self._stream(request, body)

    def _error(self, status: int, kind: str, message: str) -> web.Response:
        return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def send(event: Any) -> None:
            data = event.model_dump_json(exclude_none=True) if hasattr(event, "model_dump_json") else json.dumps(event)
            kind = json.loads(data)["type"]
            await response.write(f"event: {kind}\ndata: {data}\n\n".encode())

        message = self._message(body)
        start = message.model_copy(update={"content": [], "stop_reason": None,
                                           "usage": at.Usage(input_tokens=11, output_tokens=1,
                                                             cache_read_input_tokens=5,
                                                             cache_creation_input_tokens=3)})
        await send(at.RawMessageStartEvent(type="message_start", message=start))
        await send({"type": "ping"})
        for index, block in enumerate(message.content):
            if block.type == "thinking":
                await send(at.RawContentBlockStartEvent(type="content_block_start", index=index, content_block=
                                                        at.ThinkingBlock(type="thinking", thinking="", signature="")))
                for piece in block.thinking.split(". "):
                    await send(at.RawContentBlockDeltaEvent(type="content_block_delta", index=index,
                                                            delta=at.ThinkingDelta(type="thinking_delta",
                                                                                   thinking=piece)))
                await send(at.RawContentBlockDeltaEvent(type="content_block_delta", index=index, delta=at.SignatureDelta(
                    type="signature_delta", signature=block.signature)))
            elif block.type == "text":
                await send(at.RawContentBlockStartEvent(type="content_block_start", index=index,
                                                        content_block=at.TextBlock(type="text", text="")))
                words = block.text.split(" ")
                for n, word in enumerate(words):
                    await send(at.RawContentBlockDeltaEvent(type="content_block_delta", index=index, delta=at.TextDelta(
                        type="text_delta", text=word if n == 0 else " " + word)))
                    if last_text(body) == "slow" and n == 0:
                        await self.gate.wait()
                    if last_text(body) == "break" and n == 1:
                        await send({"type": "error", "error": {"type": "overloaded_error",
                                                                "message": "Overloaded mid-stream"}})
                        return response
            else:
                await send(at.RawContentBlockStartEvent(type="content_block_start", index=index,
                                                        content_block=block.model_copy(update={"input": {}})))
                arguments = json.dumps(block.input)
                for piece in (arguments[:5], arguments[5:]):
                    await send(at.RawContentBlockDeltaEvent(type="content_block_delta", index=index,
                                                            delta=at.InputJSONDelta(type="input_json_delta",
                                                                                    partial_json=piece)))
            await send(at.RawContentBlockStopEvent(type="content_block_stop", index=index))
        await send(at.RawMessageDeltaEvent(type="message_delta", delta={"stop_reason": message.stop_reason,
                                                                         "stop_sequence": None},
                                           usage=at.MessageDeltaUsage(output_tokens=7)))
        await send(at.RawMessageStopEvent(type="message_stop"))
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def events(receiver, monkeypatch):
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/global")
    monkeypatch.setenv("ACME_TOKEN", "global-token")
    return receiver


def models(fake: FakeAnthropic, **extra: Any) -> list[dict[str, Any]]:
    return [{"model_name": "claude", "litellm_params": {
        "model": f"anthropic/{MODEL}", "api_base": fake.url, "api_key": API_KEY, "timeout": 10,
        "input_cost_per_token": 0.001, "output_cost_per_token": 0.002, **extra}}]


def sdk(gw: Any, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gw.client.base_url).rstrip("/") + "/v1", api_key=key, max_retries=0, timeout=20)


async def test_chat_translates_system_images_and_usage_and_logs_the_event(fake, events, make_config, start) -> None:
    async with start(make_config(models=models(fake), litellm={"callbacks": ["acme"]})) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="claude", messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}],
            stop="END", user="user-7")
        assert answer.choices[0].message.content == "You said: what is this"
        assert answer.choices[0].finish_reason == "stop"
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (19, 7, 26)
        assert answer.usage.prompt_tokens_details.cached_tokens == 5
        assert fake.invalid == []
        sent = fake.requests[-1]["body"]
        assert sent["system"] == "Be brief." and sent["max_tokens"] == 4096  # LiteLLM's default
        assert sent["stop_sequences"] == ["END"] and sent["metadata"] == {"user_id": "user-7"}
        images = [b["source"] for b in sent["messages"][0]["content"] if b["type"] == "image"]
        assert images == [{"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                          {"type": "url", "url": "https://example.com/cat.png"}]
        assert await events.wait_for_async(lambda: len(events.events("/dest/global")) >= 1)
        (event,) = events.events("/dest/global")
        assert event["custom_llm_provider"] == "anthropic" and event["model"] == MODEL
        assert (event["prompt_tokens"], event["completion_tokens"]) == (19, 7)
        assert event["response_cost"] == pytest.approx(19 * 0.001 + 7 * 0.002)


async def test_max_tokens_from_the_request_and_length_finish(fake, make_config, start) -> None:
    async with start(make_config(models=models(fake))) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="claude", max_tokens=50,
                                                      messages=[{"role": "user", "content": "long"}])
        assert answer.choices[0].finish_reason == "length"
        assert fake.requests[-1]["body"]["max_tokens"] == 50 and fake.invalid == []


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


async def test_tools_round_trip_with_parallel_calls(fake, make_config, start) -> None:
    async with start(make_config(models=models(fake))) as gw:
        client = sdk(gw, await gw.new_key())
        messages: list[Any] = [{"role": "user", "content": "weather in Paris and Rome?"}]
        first = await client.chat.completions.create(model="claude", messages=messages, tools=TOOLS,
                                                     tool_choice="required", parallel_tool_calls=False)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls
        assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
            ("toolu_1", "get_weather", {"city": "Paris"}), ("toolu_2", "get_weather", {"city": "Rome"})]
        sent = fake.requests[-1]["body"]
        assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
        assert sent["tools"][0]["input_schema"]["properties"] == {"city": {"type": "string"}}
        messages.append(choice.message.model_dump(exclude_none=True))
        messages += [{"role": "tool", "tool_call_id": c.id, "content": f"sunny in {c.id}"} for c in calls]
        second = await client.chat.completions.create(model="claude", messages=messages, tools=TOOLS)
        assert second.choices[0].message.content.startswith("You said")
        assert fake.invalid == []
        turns = fake.requests[-1]["body"]["messages"]
        assert [t["role"] for t in turns] == ["user", "assistant", "user"]  # tool results merged in one turn
        assert [b["type"] for b in turns[1]["content"]] == ["text", "tool_use", "tool_use"]
        assert [b["tool_use_id"] for b in turns[2]["content"]] == ["toolu_1", "toolu_2"]


async def test_stream_with_include_usage_and_tool_call_deltas(fake, events, make_config, start) -> None:
    async with start(make_config(models=models(fake), litellm={"callbacks": ["acme"]})) as gw:
        client = sdk(gw, await gw.new_key())
        stream = await client.chat.completions.create(model="claude", stream=True,
                                                      stream_options={"include_usage": True},
                                                      messages=[{"role": "user", "content": "hello there friend"}])
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "You said: hello there friend"
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 19
        assert chunks[-1].usage.completion_tokens == 7
        tool_stream = await client.chat.completions.create(model="claude", stream=True, tools=TOOLS,
                                                           messages=[{"role": "user", "content": "weather?"}])
        calls: dict[int, dict[str, str]] = {}
        async for chunk in tool_stream:
            assert chunk.usage is None  # not asked for
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += call.id or ""
                slot["name"] += (call.function.name or "") if call.function else ""
                slot["arguments"] += (call.function.arguments or "") if call.function else ""
        assert {i: (c["id"], c["name"], json.loads(c["arguments"])) for i, c in calls.items()} == {
            0: ("toolu_1", "get_weather", {"city": "Paris"}), 1: ("toolu_2", "get_weather", {"city": "Rome"})}
        assert fake.invalid == []
        assert await events.wait_for_async(lambda: len(events.events("/dest/global")) >= 2)
        logged = sorted(events.events("/dest/global"), key=lambda e: e["startTime"])
        assert all(e["stream"] and e["custom_llm_provider"] == "anthropic" for e in logged)
        assert [(e["prompt_tokens"], e["completion_tokens"]) for e in logged] == [(19, 7), (19, 7)]
        assert logged[1]["response"]["choices"][0]["message"]["tool_calls"][1]["function"]["name"] == "get_weather"


async def test_stream_chunks_reach_the_client_before_the_upstream_finishes(fake, make_config, start) -> None:
    async with start(make_config(models=models(fake))) as gw:
        client = sdk(gw, await gw.new_key())
        stream = await client.chat.completions.create(model="claude", stream=True,
                                                      messages=[{"role": "user", "content": "slow"}])
        received: list[str] = []
        async for chunk in stream:
            piece = chunk.choices[0].delta.content if chunk.choices else None
            if piece:
                received.append(piece)
                if len(received) == 1:
                    # the fake holds the rest until this gate opens: the first word arrived unbuffered
                    assert not fake.gate.is_set()
                    fake.gate.set()
        assert "".join(received) == "You said: slow"


async def test_errors_are_openai_shaped_before_and_during_a_stream(fake, events, make_config, start) -> None:
    bad_key = models(fake, api_key="sk-ant-wrong")[0] | {"model_name": "claude-bad"}
    async with start(make_config(models=[*models(fake), bad_key], litellm={"callbacks": ["acme"]})) as gw:
        client = sdk(gw, await gw.new_key())
        with pytest.raises(openai.AuthenticationError) as denied:
            await client.chat.completions.create(model="claude-bad", messages=[{"role": "user", "content": "hi"}])
        assert denied.value.body["type"] == "authentication_error" and "x-api-key" in denied.value.body["message"]
        with pytest.raises(openai.APIStatusError) as busy:
            await client.chat.completions.create(model="claude", stream=True,
                                                 messages=[{"role": "user", "content": "overloaded"}])
        assert busy.value.status_code == 529 and busy.value.body["type"] == "overloaded_error"
        stream = await client.chat.completions.create(model="claude", stream=True,
                                                      messages=[{"role": "user", "content": "break"}])
        with pytest.raises(openai.APIError) as broken:
            async for _ in stream:
                pass
        assert "Overloaded mid-stream" in str(broken.value)
        # negative control: the same model answers a normal request
        ok = await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].message.content == "You said: hi"
        assert await events.wait_for_async(lambda: len(events.events("/dest/global")) >= 4)
        logged = sorted(events.events("/dest/global"), key=lambda e: e["startTime"])
        assert [e["status"] for e in logged] == ["failure", "failure", "failure", "success"]
        assert logged[2]["error_str"] == "Overloaded mid-stream"


async def test_unsupported_parameter_is_400_naming_it_unless_drop_params(fake, make_config, start) -> None:
    dropping = models(fake, drop_params=True)[0] | {"model_name": "claude-drop"}
    async with start(make_config(models=[*models(fake), dropping])) as gw:
        client = sdk(gw, await gw.new_key())
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="claude", frequency_penalty=0.5,
                                                 messages=[{"role": "user", "content": "hi"}])
        message = refused.value.body["message"]
        assert "frequency_penalty" in message and "anthropic" in message and "drop_params" in message
        assert fake.requests == []  # refused before any upstream call
        answer = await client.chat.completions.create(model="claude-drop", frequency_penalty=0.5,
                                                      messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "You said: hi"
        assert "frequency_penalty" not in fake.requests[-1]["body"] and fake.invalid == []


async def test_global_drop_params_applies_to_every_model(fake, make_config, start) -> None:
    async with start(make_config(models=models(fake), litellm={"drop_params": True})) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="claude", seed=3, n=1, temperature=0.2,
                                                      messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "You said: hi"
        assert not {"seed", "temperature", "n"} & set(fake.requests[-1]["body"]) and fake.invalid == []


def test_fake_validation_refuses_what_the_real_api_would() -> None:
    """The negative control of every ``fake.invalid == []`` above: the SDK types do catch bad requests."""
    good = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    validate_request(good)
    for bad in ({**good, "max_tokens": None}, {**good, "frequency_penalty": 1}, {**good, "temperature": 0.5},
                {**good, "messages": [{"role": "tool", "content": "x"}]},
                {**good, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
                {**good, "tools": [{"type": "function", "function": {"name": "f"}}]}):
        with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError or our ValueError
            validate_request(bad)


async def test_translation_cpu_per_request_is_small() -> None:
    """Measured, not asserted tightly: request and response translation of a typical chat (printed with -s)."""
    from sluicegate.providers.anthropic import AnthropicProvider
    from sluicegate.providers.models import Deployment

    deployment = Deployment(model_name="c", custom_llm_provider="anthropic", upstream_model=MODEL,
                            api_base="http://127.0.0.1:9", api_key=API_KEY)
    provider = AnthropicProvider(deployment, AnthropicProvider.Params())
    body = {"model": "c", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hello, how are you today?"}],
            "max_tokens": 256}
    answer = FakeAnthropic()._message({"messages": [{"role": "user", "content": "hi"}]}).model_dump(exclude_none=True)
    import msgspec

    raw_answer = msgspec.json.encode(answer)
    rounds = 5000
    started = time.process_time()
    for _ in range(rounds):
        msgspec.json.encode(provider.translate_request(provider.accepted(body), stream=False))
        msgspec.json.encode(provider.translate_response(msgspec.json.decode(raw_answer)))
    per_request_us = (time.process_time() - started) / rounds * 1e6
    print(f"anthropic translation: {per_request_us:.1f} us CPU per request")
    assert per_request_us < 1000  # a sanity bound for a shared CI core; the measured figure is far below



SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "integer"}},
          "required": ["city", "temp"], "additionalProperties": False}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}


async def test_response_format_json_schema_uses_structured_outputs_where_the_model_has_them(fake, make_config,
                                                                                            start) -> None:
    sonnet = models(fake, model="anthropic/claude-sonnet-4-5-20250929")[0] | {"model_name": "sonnet"}
    async with start(make_config(models=[sonnet])) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="sonnet", response_format=JSON_SCHEMA,
                                                      messages=[{"role": "user", "content": "weather?"}])
        assert json.loads(answer.choices[0].message.content) == {"city": "Paris", "temp": 21}
        sent = fake.requests[-1]["body"]
        assert sent["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
        assert "tools" not in sent and fake.invalid == []


async def test_response_format_is_a_forced_tool_for_other_models(fake, make_config, start) -> None:
    async with start(make_config(models=models(fake))) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="claude", response_format=JSON_SCHEMA,
                                                      messages=[{"role": "user", "content": "weather?"}])
        choice = answer.choices[0]
        assert json.loads(choice.message.content) == {"city": "Paris", "temp": 21}
        assert choice.message.tool_calls is None and choice.finish_reason == "stop"
        sent = fake.requests[-1]["body"]
        assert sent["tools"] == [{"name": "json_tool_call", "input_schema": SCHEMA}]
        assert sent["tool_choice"] == {"type": "tool", "name": "json_tool_call"} and "output_config" not in sent
        stream = await client.chat.completions.create(model="claude", response_format={"type": "json_object"},
                                                      stream=True, messages=[{"role": "user", "content": "weather?"}])
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert json.loads(text) == {"city": "Paris", "temp": 21}
        assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        assert fake.requests[-1]["body"]["tools"][0]["input_schema"]["additionalProperties"] is True
        # negative control: the same request without response_format is an ordinary chat
        plain = await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
        assert plain.choices[0].message.content == "You said: hi" and "tools" not in fake.requests[-1]["body"]
        assert fake.invalid == []


async def test_reasoning_effort_thinking_blocks_round_trip_and_stream(fake, make_config, start) -> None:
    async with start(make_config(models=models(fake))) as gw:
        client = sdk(gw, await gw.new_key())
        messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
        first = await client.chat.completions.create(model="claude", messages=messages, tools=TOOLS,
                                                     reasoning_effort="medium")
        sent = fake.requests[-1]["body"]
        assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
        assert sent["max_tokens"] == 4096 + 2048  # LiteLLM's default answer length plus the budget
        reply = first.choices[0].message
        assert reply.model_extra["reasoning_content"] == "First, the weather. Then the answer."
        assert reply.model_extra["thinking_blocks"] == [{"type": "thinking", "signature": "sig-abc123",
                                                         "thinking": "First, the weather. Then the answer."}]
        # the thinking block goes back with the tool calls (the API refuses a tool_use turn without it)
        messages.append(reply.model_dump(exclude_none=True))
        messages += [{"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in reply.tool_calls]
        second = await client.chat.completions.create(model="claude", messages=messages, tools=TOOLS,
                                                      extra_body={"thinking": {"type": "enabled",
                                                                               "budget_tokens": 1024}})
        assert second.choices[0].message.content.startswith("You said")
        assistant = fake.requests[-1]["body"]["messages"][1]["content"]
        assert assistant[0] == {"type": "thinking", "thinking": "First, the weather. Then the answer.",
                                "signature": "sig-abc123"}
        stream = await client.chat.completions.create(model="claude", stream=True, reasoning_effort="low",
                                                      messages=[{"role": "user", "content": "hi"}])
        reasoning, signatures, text = "", [], ""
        async for chunk in stream:
            delta = chunk.choices[0].delta if chunk.choices else None
            if delta is None:
                continue
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            signatures += [b["signature"] for b in (delta.model_extra or {}).get("thinking_blocks") or ()
                           if b.get("signature")]
            text += delta.content or ""
        assert (reasoning, signatures, text) == ("First, the weatherThen the answer.", ["sig-abc123"], "You said: hi")
        assert fake.requests[-1]["body"]["thinking"] == {"type": "enabled", "budget_tokens": 1024}
        assert fake.invalid == []


async def test_thinking_dropped_from_a_tool_turn_is_refused_by_the_fake(fake, make_config, start) -> None:
    """Negative control of the round trip above: without its thinking block the same history is refused."""
    async with start(make_config(models=models(fake))) as gw:
        client = sdk(gw, await gw.new_key())
        messages = [{"role": "user", "content": "weather in Paris?"},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "toolu_1", "type": "function",
                                                                          "function": {"name": "get_weather",
                                                                                       "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}]
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="claude", messages=messages, tools=TOOLS,
                                                 reasoning_effort="low")
        assert fake.invalid and "thinking" in fake.invalid[-1]


async def test_bad_response_format_or_reasoning_effort_is_a_400_naming_it(fake, make_config, start) -> None:
    async with start(make_config(models=models(fake))) as gw:
        key = await gw.new_key()
        for extra, field in (({"response_format": {"type": "xml"}}, "response_format"),
                             ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
                              "response_format"),
                             ({"reasoning_effort": "extreme"}, "reasoning_effort"),
                             ({"reasoning_effort": ["high"]}, "reasoning_effort"),
                             ({"stop": [1]}, "stop"),
                             ({"thinking": {"type": "sometimes"}}, "thinking"),
                             ({"messages": [{"role": "assistant", "content": "x", "thinking_blocks": [{"type": "x"}]},
                                            {"role": "user", "content": "hi"}]}, "messages")):
            body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], **extra}
            response = await gw.client.post("/v1/chat/completions", json=body,
                                            headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 400, (extra, response.text)
            assert response.json()["error"]["param"] == field
        assert fake.requests == []


LOCATION = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "country"]}
DEFS_SCHEMA = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
               "properties": {"where": {"$ref": "#/$defs/Location"},
                              "unit": {"oneOf": [{"const": "C"}, {"const": "F"}]},
                              "history": {"type": "array", "items": {"$ref": "#/definitions/Reading"}}},
               "required": ["where", "unit", "history"], "additionalProperties": False,
               "$defs": {"Location": LOCATION},
               "definitions": {"Reading": {"type": "object", "properties": {"temp": {"type": "integer"}},
                                           "required": ["temp"]}}}


async def test_structured_outputs_keep_defs_and_refs_and_refuse_what_anthropic_does_not_take(
        fake, make_config, start) -> None:
    sonnet = models(fake, model="anthropic/claude-sonnet-4-5-20250929")[0] | {"model_name": "sonnet"}
    async with start(make_config(models=[sonnet])) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(
            model="sonnet", messages=[{"role": "user", "content": "weather?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": DEFS_SCHEMA}})
        assert fake.invalid == []
        sent = fake.requests[-1]["body"]["output_config"]["format"]["schema"]
        # local refs stay refs; definitions become $defs; every object closed; oneOf sent as anyOf
        assert sent["properties"]["where"] == {"$ref": "#/$defs/Location"}
        assert sent["properties"]["history"]["items"] == {"$ref": "#/$defs/Reading"}
        assert sent["$defs"]["Location"] == {**LOCATION, "additionalProperties": False}
        assert sent["$defs"]["Reading"]["additionalProperties"] is False
        assert sent["properties"]["unit"] == {"anyOf": [{"const": "C"}, {"const": "F"}]}
        assert "$schema" not in sent and "definitions" not in sent
        assert json.loads(answer.choices[0].message.content) == {
            "where": {"city": "Paris", "country": "Paris"}, "unit": "C", "history": [{"temp": 21}]}
        sent_before = len(fake.requests)
        recursive = {"type": "object", "properties": {"root": {"$ref": "#/$defs/Node"}}, "required": ["root"],
                     "$defs": {"Node": {"type": "object", "properties": {
                         "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}}}
        age = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}
        cases = [(recursive, "schema.$defs.Node.properties.children.items.$ref", "recursive"),
                 (age, "schema.properties.age.minimum", "minimum"),
                 ({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}},
                  "schema.properties.a.$ref", "local references"),
                 ({"type": "object", "additionalProperties": True}, "schema.additionalProperties", "false"),
                 ({"type": "object", "properties": {"d": {"type": "string", "format": "binary"}}},
                  "schema.properties.d.format", "binary"),
                 ({"type": "object", "properties": {"t": {"type": "array", "maxItems": 3}}},
                  "schema.properties.t.maxItems", "maxItems"),
                 ({"type": "object", "properties": {"w": {"$ref": "#/$defs/Location", "description": "x"}},
                   "$defs": {"Location": LOCATION}}, "schema.properties.w.description", "beside $ref"),
                 ({"type": "object", "properties": {"n": {"type": "string", "pattern": "^a+$"}}},
                  "schema.properties.n.pattern", "pattern")]
        for schema, path, reason in cases:
            response = await gw.client.post("/v1/chat/completions", json={
                "model": "sonnet", "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}},
                headers={"Authorization": f"Bearer {client.api_key}"})
            error = response.json()["error"]
            assert response.status_code == 400 and error["param"] == "response_format", response.text
            assert f"response_format.json_schema.{path}" in error["message"] and reason in error["message"], error
        assert len(fake.requests) == sent_before  # nothing refused went upstream


async def test_the_forced_tool_takes_defs_with_a_root_ref_resolved(fake, make_config, start) -> None:
    async with start(make_config(models=models(fake))) as gw:
        client = sdk(gw, await gw.new_key())
        rooted = {"$ref": "#/$defs/Weather", "$defs": {
            "Weather": {"type": "object", "properties": {"city": {"type": "string"},
                                                         "where": {"$ref": "#/$defs/Location"}}},
            "Location": LOCATION}}
        answer = await client.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "weather?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": rooted}})
        assert json.loads(answer.choices[0].message.content) == {"city": "Paris", "temp": 21}
        assert fake.invalid == []
        (tool,) = fake.requests[-1]["body"]["tools"]
        assert tool["input_schema"]["type"] == "object" and "$ref" not in tool["input_schema"]
        assert tool["input_schema"]["properties"]["where"] == {"$ref": "#/$defs/Location"}
        assert tool["input_schema"]["$defs"] == rooted["$defs"]  # the refs inside still resolve
        # a tool schema may carry what structured outputs refuse (a minimum, say): it is sent as it is
        await client.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "weather?"}], response_format={
                "type": "json_schema", "json_schema": {"name": "w", "schema": {
                    "type": "object", "properties": {"temp": {"type": "integer", "minimum": -90}}}}})
        assert fake.requests[-1]["body"]["tools"][0]["input_schema"]["properties"]["temp"]["minimum"] == -90
        sent_before = len(fake.requests)
        response = await gw.client.post("/v1/chat/completions", json={
            "model": "claude", "messages": [{"role": "user", "content": "hi"}], "response_format": {
                "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}},
            headers={"Authorization": f"Bearer {client.api_key}"})
        assert response.status_code == 400 and "response_format.json_schema.schema.type" in response.text
        assert len(fake.requests) == sent_before


def test_fake_refuses_structured_schemas_the_api_refuses() -> None:
    """Negative control of the fake's structured-output rules (``fake.invalid == []`` above)."""
    check_structured_schema({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}},
                             "additionalProperties": False,
                             "$defs": {"A": {"type": "string", "format": "date"}}})
    for bad in ({"type": "object", "properties": {}},  # not closed
                {"type": "object", "additionalProperties": False, "properties": {"n": {"type": "integer",
                                                                                      "minimum": 1}}},
                {"type": "object", "additionalProperties": False, "properties": {"a": {"$ref": "#/$defs/B"}}},
                {"type": "object", "additionalProperties": False, "properties": {"a": {"$ref": "#/$defs/A"}},
                 "$defs": {"A": {"type": "array", "items": {"$ref": "#/$defs/A"}}}}):
        with pytest.raises(ValueError):
            check_structured_schema(bad)
