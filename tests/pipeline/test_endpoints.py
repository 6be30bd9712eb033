"""The OpenAI endpoints beyond chat, through the one call pipeline: the official ``openai`` SDK → a real gateway →
real upstreams on loopback → a team's acme sink, delivered to a receiver.

Upstreams: ``mock_upstream`` (tests/conftest.py) speaks OpenAI's and Azure's wire format for completions,
responses (stored, with ``GET``/``DELETE`` and ``input_items``), images, audio and moderations, and refuses what
OpenAI refuses (no key, a JSON body for an upload, a multipart body without a named file part). The chat-only
translations run against the fake Anthropic Messages API of ``test_provider_anthropic.py``, which checks every
request against the ``anthropic`` SDK's types; what comes back is checked against the ``openai`` SDK's types.
"""

from __future__ import annotations

import importlib.util
import io
import json
import uuid
import wave
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import Response as ResponseObject
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from sluicegate.events import REDACTED

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

_spec = importlib.util.spec_from_file_location("_anthropic_fake", Path(__file__).with_name(
    "test_provider_anthropic.py"))
_fake_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fake_module)
FakeAnthropic = _fake_module.FakeAnthropic
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)


@pytest.fixture
async def claude_upstream():
    server = FakeAnthropic()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def sdk():
    """``sdk(gw, key)`` → an ``openai.AsyncOpenAI`` client of the gateway, closed when the test ends."""
    clients: list[openai.AsyncOpenAI] = []

    def make(gw: Any, key: str) -> openai.AsyncOpenAI:
        clients.append(openai.AsyncOpenAI(base_url=str(gw.client.base_url).rstrip("/") + "/v1", api_key=key,
                                          max_retries=0, timeout=20))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


def models(upstream: Any, claude: Any = None) -> list[dict[str, Any]]:
    params = {"api_base": upstream.url, "api_key": "up-key", "timeout": 10}
    azure = {"api_base": upstream.url.removesuffix("/v1"), "api_key": "az-key", "api_version": "2024-10-21",
             "timeout": 10}
    entries = [
        {"model_name": "instruct", "litellm_params": {"model": "openai/gpt-3.5-turbo-instruct", **params}},
        {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o-mini", **params}},
        {"model_name": "gpt-azure", "litellm_params": {"model": "azure/my-gpt", **azure}},
        {"model_name": "image", "litellm_params": {"model": "openai/dall-e-3", "output_cost_per_image": 0.04,
                                                   **params}},
        {"model_name": "image-unpriced", "litellm_params": {"model": "openai/dall-e-2", **params}},
        {"model_name": "gpt-image", "litellm_params": {"model": "openai/gpt-image-1", **params}},
        {"model_name": "whisper", "litellm_params": {"model": "openai/whisper-1", **params}},
        {"model_name": "whisper-azure", "litellm_params": {"model": "azure/my-whisper", **azure,
                                                           "input_cost_per_second": 0.001}},
        {"model_name": "tts", "litellm_params": {"model": "openai/tts-1", **params}},
        {"model_name": "moderation", "litellm_params": {"model": "openai/omni-moderation-latest", **params}},
        {"model_name": "embed", "litellm_params": {"model": "openai/text-embedding-3-small", **params}},
        {"model_name": "groq", "litellm_params": {"model": "groq/llama-x", **params}},
    ]
    if claude is not None:
        entries.append({"model_name": "claude", "litellm_params": {
            "model": f"anthropic/{_fake_module.MODEL}", "api_base": claude.url, "api_key": _fake_module.API_KEY,
            "timeout": 10, "input_cost_per_token": 0.001, "output_cost_per_token": 0.002}})
    return entries


async def team_key(gw: Any, vars_for: Any, team_id: str, *, redact: bool = False) -> str:
    assert (await gw.admin("POST", "/team/new", json={"team_id": team_id})).status_code == 200
    callback_vars = vars_for(team_id)
    if redact:
        callback_vars["turn_off_message_logging"] = True
    response = await gw.admin("POST", f"/team/{team_id}/callback", json={"callback_name": "acme",
                                                                          "callback_vars": callback_vars})
    assert response.status_code == 200, response.text
    return await gw.new_key(team_id=team_id)


async def events_for(receiver: Any, team_id: str, count: int) -> list[dict[str, Any]]:
    assert await receiver.wait_for_async(lambda: len(receiver.events(f"/dest/{team_id}")) >= count)
    events = sorted(receiver.events(f"/dest/{team_id}"), key=lambda e: e["startTime"])
    assert len(events) == count, [e["call_type"] for e in events]
    return events


def rid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def wav(seconds: float, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x01" * int(seconds * rate))
    return buffer.getvalue()


# -- /v1/completions --------------------------------------------------------------------------------------------
async def test_completions_plain_and_streamed_with_usage_cost_and_attribution(
        sdk, mock_upstream, receiver, vars_for, make_config, start) -> None:
    async with start(make_config(models=models(mock_upstream))) as gw:
        client = sdk(gw, await team_key(gw, vars_for, "cmpl-team"))
        plain_rid, stream_rid = rid("cmpl"), rid("cmpl-s")
        answer = await client.completions.create(model="instruct", prompt="say hi", max_tokens=5, user="u-1",
                                                 extra_body={"metadata": {"session_id": "s-cmpl", "tags": ["t1"]}},
                                                 extra_headers={"x-request-id": plain_rid})
        assert answer.object == "text_completion" and answer.choices[0].text == "echo: say hi"
        stream = await client.completions.create(model="instruct", prompt="one two", stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_headers={"x-request-id": stream_rid})
        pieces, usage = [], None
        async for chunk in stream:
            pieces += [c.text for c in chunk.choices]
            usage = chunk.usage or usage
        assert "".join(pieces) == "echo: one two" and usage.completion_tokens == 3
        raw = await gw.client.post("/completions", json={"model": "instruct", "prompt": ["a", "b"]},
                                   headers={"Authorization": f"Bearer {client.api_key}"})  # without /v1
        assert [c["text"] for c in raw.json()["choices"]] == ["echo: a", "echo: b"]
        plain, streamed, both = await events_for(receiver, "cmpl-team", 3)
    received = mock_upstream.find(plain_rid)
    assert received["path"] == "/v1/completions" and received["headers"]["authorization"] == "Bearer up-key"
    assert "metadata" not in received["body"] and received["body"]["prompt"] == "say hi"
    for event in (plain, streamed, both):
        assert event["call_type"] == "atext_completion" and event["status"] == "success"
    assert plain["messages"] == "say hi" and plain["response"]["choices"][0]["text"] == "echo: say hi"
    assert (plain["prompt_tokens"], plain["completion_tokens"]) == (5, 3)
    assert plain["response_cost"] == pytest.approx(5 * 1.5e-6 + 3 * 2e-6)  # gpt-3.5-turbo-instruct
    assert plain["metadata"]["session_id"] == "s-cmpl" and plain["request_tags"] == ["t1"]
    assert plain["end_user"] == "u-1" and plain["model_parameters"] == {"max_tokens": 5}
    assert streamed["stream"] is True and streamed["response"]["choices"][0]["text"] == "echo: one two"
    assert streamed["total_tokens"] == 8 and streamed["response_cost"] > 0
    assert streamed["metadata"]["session_id"] is None  # negative control: no metadata sent


async def test_completions_translated_to_chat_for_a_chat_only_provider(
        sdk, claude_upstream, mock_upstream, receiver, vars_for, make_config, start) -> None:
    async with start(make_config(models=models(mock_upstream, claude_upstream))) as gw:
        client = sdk(gw, await team_key(gw, vars_for, "cmpl-claude"))
        answer = await client.completions.create(model="claude", prompt="hello there", max_tokens=50)
        assert answer.object == "text_completion" and answer.choices[0].text
        assert answer.usage.prompt_tokens > 0
        sent = claude_upstream.requests[-1]["body"]
        assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
        assert sent["max_tokens"] == 50
        assert not claude_upstream.invalid
        stream = await client.completions.create(model="claude", prompt="hello there", stream=True)
        text = "".join([c.choices[0].text async for c in stream if c.choices])
        assert text == answer.choices[0].text
        with pytest.raises(openai.BadRequestError) as caught:
            await client.completions.create(model="claude", prompt=["a", "b"])
        error = caught.value.response.json()["error"]
        assert error["param"] == "prompt" and "anthropic" in error["message"]
        plain, streamed, refused = await events_for(receiver, "cmpl-claude", 3)
    assert plain["call_type"] == streamed["call_type"] == refused["call_type"] == "atext_completion"
    assert plain["custom_llm_provider"] == "anthropic" and plain["response_cost"] > 0
    assert streamed["prompt_tokens"] == plain["prompt_tokens"] > 0  # usage asked for the event, not shown
    assert refused["status"] == "failure"


# -- /v1/responses ----------------------------------------------------------------------------------------------
async def test_responses_native_plain_streamed_stored_and_deleted(
        sdk, mock_upstream, receiver, vars_for, make_config, start) -> None:
    async with start(make_config(models=models(mock_upstream))) as gw:
        client = sdk(gw, await team_key(gw, vars_for, "resp-team"))
        plain_rid = rid("resp")
        answer = await client.responses.create(model="gpt", input="hello", instructions="be brief",
                                               metadata={"session_id": "s-resp"}, store=True,
                                               extra_headers={"x-request-id": plain_rid})
        assert answer.output_text == "echo: hello" and answer.usage.input_tokens == 9
        kinds = [event.type async for event in await client.responses.create(model="gpt", input="hi",
                                                                              stream=True)]
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert (await client.responses.retrieve(answer.id)).output_text == "echo: hello"
        items = await client.responses.input_items.list(answer.id, limit=5)
        assert items.data[0].content[0].text == "hello"
        assert mock_upstream.requests[-1]["query"] == {"limit": "5"}
        await client.responses.delete(answer.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(answer.id)
        with pytest.raises(openai.NotFoundError):  # negative control: an id no upstream has
            await client.responses.retrieve("resp_nosuch")
        azure_rid = rid("resp-az")
        await client.responses.create(model="gpt-azure", input="hey", extra_headers={"x-request-id": azure_rid})
        with pytest.raises(openai.AuthenticationError):
            await sdk(gw, "sk-wrong").responses.retrieve(answer.id)
        plain, streamed, azure = await events_for(receiver, "resp-team", 3)
    received = mock_upstream.find(plain_rid)
    assert received["path"] == "/v1/responses"
    assert received["body"]["metadata"] == {"session_id": "s-resp"}  # OpenAI stores it: store is true
    az = mock_upstream.find(azure_rid)
    assert az["path"] == "/openai/responses" and az["query"] == {"api-version": "2024-10-21"}
    assert az["headers"]["api-key"] == "az-key"
    for event in (plain, streamed, azure):
        assert event["call_type"] == "aresponses" and event["status"] == "success"
    assert plain["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert (plain["prompt_tokens"], plain["completion_tokens"]) == (9, 4)
    assert plain["response_cost"] == pytest.approx(9 * 0.15e-6 + 4 * 0.6e-6)  # gpt-4o-mini
    assert plain["metadata"]["session_id"] == "s-resp" and "instructions" not in plain["model_parameters"]
    assert streamed["stream"] is True and streamed["response"]["output"][0]["content"][0]["text"] == "echo: hi"
    assert streamed["total_tokens"] == 13


async def test_responses_translated_to_chat_with_tools_and_events_of_the_sdk_types(
        sdk, claude_upstream, mock_upstream, receiver, vars_for, make_config, start) -> None:
    tool = {"type": "function", "name": "get_weather", "description": "weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    async with start(make_config(models=models(mock_upstream, claude_upstream))) as gw:
        client = sdk(gw, await team_key(gw, vars_for, "resp-claude"))
        answer = await client.responses.create(model="claude", input="hello", instructions="be kind",
                                               max_output_tokens=64)
        sent = claude_upstream.requests[-1]["body"]
        assert sent["system"] in ("be kind", [{"type": "text", "text": "be kind"}]) and sent["max_tokens"] == 64
        assert answer.output_text and answer.usage.input_tokens > 0 and answer.status == "completed"
        raw = await gw.client.post("/v1/responses", headers={"Authorization": f"Bearer {client.api_key}"},
                                   json={"model": "claude", "input": "hello"})
        ResponseObject.model_validate(raw.json())  # every field the SDK's type requires, as the JSON has it
        raw = await gw.client.post("/v1/responses", headers={"Authorization": f"Bearer {client.api_key}"}, json={
            "model": "claude", "input": "weather in Paris? use the tool", "tools": [tool], "stream": True})
        events = [json.loads(line[5:]) for line in raw.text.splitlines() if line.startswith("data:")]
        for event in events:
            STREAM_EVENT.validate_python(event)
        kinds = [e["type"] for e in events]
        assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        final = ResponseObject.model_validate(events[-1]["response"])
        calls = [item for item in final.output if item.type == "function_call"]
        assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments)
        assert claude_upstream.requests[-1]["body"]["tools"][0]["name"] == \
            "get_weather"
        follow_up = await client.responses.create(model="claude", tools=[tool], input=[
            {"role": "user", "content": "weather in Paris?"},
            {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
             "arguments": calls[0].arguments},
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}])
        assert follow_up.output_text
        assert not claude_upstream.invalid
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(model="claude", input="x", previous_response_id="resp_1")
        error = caught.value.response.json()["error"]
        assert error["param"] == "previous_response_id" and "anthropic" in error["message"]
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(model="claude", input="x", tools=[{"type": "web_search"}])
        assert caught.value.response.json()["error"]["param"] == "tools[0].type"
        logged = await events_for(receiver, "resp-claude", 6)
    assert [e["call_type"] for e in logged] == ["aresponses"] * 6
    assert [e["status"] for e in logged] == ["success"] * 4 + ["failure"] * 2
    streamed = logged[2]
    assert streamed["stream"] and streamed["prompt_tokens"] > 0 and streamed["response_cost"] > 0
    assert streamed["response"]["output"][-1]["type"] == "function_call"


# -- images, audio, moderations ---------------------------------------------------------------------------------
async def test_images_never_log_image_bytes_and_count_images(
        sdk, mock_upstream, claude_upstream, receiver, vars_for, make_config, start) -> None:
    async with start(make_config(models=models(mock_upstream, claude_upstream))) as gw:
        client = sdk(gw, await team_key(gw, vars_for, "img-team"))
        image_rid = rid("img")
        images = await client.images.generate(model="image", prompt="a cat", n=2, size="1024x1024",
                                              response_format="b64_json", user="u-img",
                                              extra_body={"metadata": {"session_id": "s-img"}},
                                              extra_headers={"x-request-id": image_rid})
        assert len(images.data) == 2 and len(images.data[0].b64_json) == 4000
        tokens = await client.images.generate(model="gpt-image", prompt="a dog")
        urls = await gw.client.post("/images/generations", headers={"Authorization": f"Bearer {client.api_key}"},
                                    json={"model": "image-unpriced", "prompt": "x", "response_format": "url"})
        assert urls.json()["data"][0]["url"].startswith("https://")
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.generate(model="claude", prompt="a cat")
        error = caught.value.response.json()["error"]
        assert "anthropic" in error["message"] and "/v1/images/generations" in error["message"]
        two, one, url, refused = await events_for(receiver, "img-team", 4)
    assert tokens.usage.output_tokens == 1000
    assert "metadata" not in mock_upstream.find(image_rid)["body"]
    assert two["metadata"]["session_id"] == "s-img" and two["end_user"] == "u-img"
    assert two["call_type"] == "aimage_generation" and two["messages"] == "a cat"
    placeholder = two["response"]["data"][0]["b64_json"]
    assert placeholder == "<image/png: 3000 bytes, not logged>"
    assert images.data[0].b64_json not in json.dumps(two)
    assert two["model_parameters"] == {"n": 2, "size": "1024x1024"}
    assert two["response"]["usage"] == {"images": 2, "size": "1024x1024", "quality": None}
    assert two["response_cost"] == pytest.approx(2 * 0.04)  # the config's output_cost_per_image
    assert url["response_cost"] == 0.0  # dall-e-2: neither the table nor the config prices it (warned at start-up)
    assert (one["prompt_tokens"], one["completion_tokens"]) == (10, 1000)
    assert one["response_cost"] == pytest.approx(10 * 5e-6 + 1000 * 40e-6)  # gpt-image-1, by token
    assert url["response"]["data"][0]["url"].startswith("https://")  # negative control: a URL is no binary
    assert refused["status"] == "failure" and refused["call_type"] == "aimage_generation"


async def test_transcriptions_upload_multipart_and_log_a_placeholder_and_seconds(
        sdk, mock_upstream, receiver, vars_for, make_config, start) -> None:
    audio = wav(2.0)
    async with start(make_config(models=models(mock_upstream))) as gw:
        client = sdk(gw, await team_key(gw, vars_for, "stt-team"))
        upload_rid = rid("stt")
        text = await client.audio.transcriptions.create(model="whisper", file=("talk.wav", audio, "audio/wav"),
                                                        language="en", extra_headers={"x-request-id": upload_rid},
                                                        extra_body={"metadata": '{"session_id": "s-stt"}'})
        assert text.text == f"transcript of talk.wav ({len(audio)} bytes)"
        plain = await client.audio.transcriptions.create(model="whisper-azure", file=("a.wav", audio),
                                                         response_format="text")
        assert plain.startswith("transcript of a.wav")
        verbose = await client.audio.transcriptions.create(model="whisper", file=("b.wav", audio),
                                                           response_format="verbose_json")
        assert verbose.duration == 12.5
        key = {"Authorization": f"Bearer {client.api_key}"}
        as_json = await gw.client.post("/audio/transcriptions", headers=key, json={"model": "whisper"})
        assert as_json.status_code == 400 and as_json.json()["error"]["param"] == "file"
        no_file = await gw.client.post("/v1/audio/transcriptions", headers=key, files={"x": ("y", b"1")},
                                       data={"model": "whisper"})
        assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "x"
        too_big = await gw.client.post("/v1/audio/transcriptions", headers=key, data={"model": "whisper"},
                                       files={"file": ("big.wav", b"\0" * (27 * 1024 * 1024), "audio/wav")})
        assert too_big.status_code == 413 and "26 MiB" in too_big.json()["error"]["message"]
        first, azure, third = await events_for(receiver, "stt-team", 3)
    received = mock_upstream.find(upload_rid)
    assert received["path"] == "/v1/audio/transcriptions" and received["headers"]["authorization"] == "Bearer up-key"
    assert received["body"]["model"] == "whisper-1" and received["body"]["language"] == "en"
    assert "metadata" not in received["body"] and first["metadata"]["session_id"] == "s-stt"
    assert received["body"]["file"] == {"filename": "talk.wav", "content_type": "audio/wav", "bytes": len(audio)}
    assert mock_upstream.requests[-3]["path"] == "/openai/deployments/my-whisper/audio/transcriptions" or any(
        r["path"] == "/openai/deployments/my-whisper/audio/transcriptions" for r in mock_upstream.requests)
    assert first["call_type"] == "atranscription"
    assert first["messages"] == f"<audio audio/wav talk.wav: {len(audio)} bytes, not logged>"
    assert first["response"]["text"] == text.text
    assert first["response_cost"] == pytest.approx(3 * 0.36 / 3600)  # whisper-1: usage.seconds = 3
    assert azure["response"] == {"text": plain, "usage": {"audio_seconds": 2.0}}
    assert azure["custom_llm_provider"] == "azure" and first["response"]["usage"]["audio_seconds"] == 3.0
    assert azure["response_cost"] == pytest.approx(2.0 * 0.001)  # seconds from the WAV header, the config's price
    assert third["response_cost"] == pytest.approx(12.5 * 0.36 / 3600)  # verbose_json's duration
    assert "model" not in first["model_parameters"] and first["model_parameters"]["language"] == "en"


async def test_speech_is_relayed_as_it_arrives_and_logged_without_audio(
        sdk, mock_upstream, claude_upstream, receiver, vars_for, make_config, start) -> None:
    mock_upstream.on("tts-1", chunk_delay=0.05)
    try:
        async with start(make_config(models=models(mock_upstream, claude_upstream))) as gw:
            client = sdk(gw, await team_key(gw, vars_for, "tts-team"))
            sentence = "x" * 95  # 10 chunks
            speech_rid = rid("tts")
            async with client.audio.speech.with_streaming_response.create(
                    model="tts", voice="alloy", input=sentence, extra_body={"metadata": {"tags": ["voice"]}},
                    extra_headers={"x-request-id": speech_rid}) as response:
                assert response.headers["content-type"] == "audio/mpeg"
                chunks = [chunk async for chunk in response.iter_bytes(chunk_size=None)]
            assert sum(map(len, chunks)) == 10 * mock_upstream.SPEECH_CHUNK
            assert len(chunks) > 1  # relayed piece by piece, not gathered into one body
            with pytest.raises(openai.BadRequestError) as caught:
                await client.audio.speech.create(model="claude", voice="alloy", input="hi")
            assert "/v1/audio/speech" in caught.value.response.json()["error"]["message"]
            spoken, refused = await events_for(receiver, "tts-team", 2)
    finally:
        mock_upstream.on("tts-1")
    assert spoken["call_type"] == "aspeech" and spoken["messages"] == sentence
    assert spoken["request_tags"] == ["voice"] and "metadata" not in mock_upstream.find(speech_rid)["body"]
    assert spoken["response"] == {"type": "audio", "media_type": "audio/mpeg",
                                  "audio": f"<audio/mpeg: {10 * 1024} bytes, not logged>",
                                  "usage": {"characters": 95}}
    assert spoken["response_cost"] == pytest.approx(95 * 15e-6)  # tts-1: per character
    assert refused["status"] == "failure"


async def test_moderations(sdk, mock_upstream, claude_upstream, receiver, vars_for, make_config, start) -> None:
    async with start(make_config(models=models(mock_upstream, claude_upstream))) as gw:
        client = sdk(gw, await team_key(gw, vars_for, "mod-team"))
        result = await client.moderations.create(model="moderation", input=["I will kill it", "hello"])
        assert [r.flagged for r in result.results] == [True, False]
        for model in ("claude", "gpt-azure"):  # neither Anthropic nor Azure has a moderation endpoint
            with pytest.raises(openai.BadRequestError) as caught:
                await client.moderations.create(model=model, input="x")
            assert "/v1/moderations" in caught.value.response.json()["error"]["message"]
        ok, *refused = await events_for(receiver, "mod-team", 3)
    assert ok["call_type"] == "amoderation" and ok["messages"] == ["I will kill it", "hello"]
    assert ok["response"]["results"][0]["flagged"] is True and ok["response_cost"] == 0.0
    assert [e["status"] for e in refused] == ["failure", "failure"]


# -- redaction across call types --------------------------------------------------------------------------------
async def test_redaction_covers_every_call_type_and_binary_never_enters_an_event(
        sdk, mock_upstream, receiver, vars_for, make_config, start) -> None:
    secret = "confidential-7731"
    async with start(make_config(models=models(mock_upstream))) as gw:
        client = sdk(gw, await team_key(gw, vars_for, "redact-team", redact=True))
        await client.completions.create(model="instruct", prompt=secret)
        await client.responses.create(model="gpt", input=secret, instructions=secret, store=False)
        stream = await client.responses.create(model="gpt", input=secret, stream=True, store=False)
        async for _ in stream:
            pass
        await client.embeddings.create(model="embed", input=[secret])
        images = await client.images.generate(model="image", prompt=secret, response_format="b64_json")
        await client.audio.transcriptions.create(model="whisper", file=(f"{secret}.wav", wav(0.5)))
        await client.audio.speech.create(model="tts", voice="alloy", input=secret)
        await client.moderations.create(model="moderation", input=secret)
        events = await events_for(receiver, "redact-team", 8)
        # negative control: the same calls for a team that logs messages keep them
        plain = sdk(gw, await team_key(gw, vars_for, "plain-team"))
        await plain.responses.create(model="gpt", input=secret, store=False)
        (kept,) = await events_for(receiver, "plain-team", 1)
    assert [e["call_type"] for e in events] == ["atext_completion", "aresponses", "aresponses", "aembedding",
                                                "aimage_generation", "atranscription", "aspeech", "amoderation"]
    for event in events:
        text = json.dumps(event)
        assert secret not in text, (event["call_type"], text[:600])
        assert images.data[0].b64_json[:200] not in text
    assert events[1]["messages"][0]["content"] == REDACTED and events[1]["response"]["instructions"] == REDACTED
    assert events[5]["response"]["text"] == REDACTED
    assert secret in json.dumps(kept)


# -- embeddings through the response cache ----------------------------------------------------------------------
async def test_embeddings_are_cached_per_input_format_and_dimensions(
        mock_upstream, receiver, vars_for, make_config, start) -> None:
    cfg = make_config(models=models(mock_upstream), litellm={"cache": True, "cache_params": {"type": "local"}})
    async with start(cfg) as gw:
        key = await team_key(gw, vars_for, "cache-team")
        headers = {"Authorization": f"Bearer {key}"}

        async def embed(**body: Any) -> str:
            response = await gw.client.post("/v1/embeddings", headers=headers, json={"model": "embed", **body})
            assert response.status_code == 200, response.text
            return response.headers["x-sluicegate-cache"]

        before = len(mock_upstream.requests)
        assert await embed(input="cache me") == "miss"
        assert await embed(input="cache me") == "hit"
        assert await embed(input="cache me", dimensions=2) == "miss"
        assert await embed(input="cache me", encoding_format="base64") == "miss"
        assert await embed(input=["cache me", "too"]) == "miss"
        assert await embed(input=[[1, 2, 3]]) == "miss"
        assert await embed(input=[[1, 2, 3]]) == "hit"
        assert await embed(input="cache me", cache={"no-cache": True}) == "miss"
        assert len(mock_upstream.requests) - before == 6
        events = await events_for(receiver, "cache-team", 8)
    hits = [e for e in events if e["cache_hit"]]
    assert len(hits) == 2 and all(e["response_cost"] == 0.0 and e["call_type"] == "aembedding" for e in hits)
    assert events[0]["cache_key"] == events[1]["cache_key"] and events[0]["response_cost"] > 0


async def test_endpoints_answer_without_v1_and_respect_model_restrictions(mock_upstream, make_config,
                                                                          start) -> None:
    async with start(make_config(models=models(mock_upstream))) as gw:
        key = await gw.new_key(models=["instruct"])
        headers = {"Authorization": f"Bearer {key}"}
        for path, body in (("/completions", {"prompt": "x"}), ("/responses", {"input": "x"}),
                           ("/images/generations", {"prompt": "x"}), ("/moderations", {"input": "x"}),
                           ("/audio/speech", {"input": "x", "voice": "alloy"})):
            refused = await gw.client.post(path, headers=headers, json={"model": "gpt", **body})
            assert refused.status_code == 403, (path, refused.text)
            missing = await gw.client.post(f"/v1{path}", headers=headers, json={"model": "instruct"})
            assert missing.status_code in (400, 403), (path, missing.text)
            assert missing.json()["error"]["param"] in ("prompt", "input", "model")
        ok = await gw.client.post("/completions", headers=headers, json={"model": "instruct", "prompt": "x"})
        assert ok.status_code == 200
        unsupported = await gw.client.post("/v1/images/generations", headers=headers,
                                           json={"model": "instruct", "prompt": "x", "stream": True})
        assert unsupported.status_code == 400 and unsupported.json()["error"]["param"] == "stream"


async def test_vendor_responses_go_through_chat_and_unserved_endpoints_name_the_vendor(
        sdk, mock_upstream, receiver, vars_for, make_config, start) -> None:
    """An OpenAI-compatible vendor (groq) serves chat but not the Responses API: the request reaches the upstream as
    a chat completion, and the answer comes back as a ``response`` (streamed: the Responses API's events)."""
    async with start(make_config(models=models(mock_upstream))) as gw:
        client = sdk(gw, await team_key(gw, vars_for, "vendor-team"))
        plain_rid = rid("vendor")
        answer = await client.responses.create(model="groq", input="ping", instructions="short",
                                               metadata={"trace_name": "t-vendor"},
                                               extra_headers={"x-request-id": plain_rid})
        assert answer.output_text == "echo: ping" and answer.usage.input_tokens == 7
        events = [event async for event in await client.responses.create(model="groq", input="pong", stream=True)]
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas == "echo: pong" and events[-1].type == "response.completed"
        assert events[-1].response.usage.output_tokens == 2
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.generate(model="groq", prompt="x")
        assert "groq" in caught.value.response.json()["error"]["message"]
        logged = await events_for(receiver, "vendor-team", 3)
    sent = mock_upstream.find(plain_rid)
    assert sent["path"] == "/v1/chat/completions" and "metadata" not in sent["body"]
    assert logged[0]["metadata"]["trace_name"] == "t-vendor"
    assert sent["body"]["messages"] == [{"role": "system", "content": "short"}, {"role": "user", "content": "ping"}]
    assert [e["call_type"] for e in logged] == ["aresponses", "aresponses", "aimage_generation"]
    assert logged[1]["total_tokens"] == 9 and logged[2]["status"] == "failure"
