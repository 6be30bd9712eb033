"""Attribution in every event, ``/v1/embeddings`` and ``/v1/models/{model}``: the official ``openai`` SDK →
gateway → a real upstream on loopback (``mock_upstream``) → the acme sink of a team, delivered to a receiver.
"""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

METADATA = {"tags": ["prod", "checkout"], "session_id": "sess-1", "trace_id": "trace-abc",
            "trace_name": "checkout-flow", "generation_name": "summarise", "trace_user_id": "user-7",
            "trace_metadata": {"env": "prod"}, "generation_id": "gen-9", "spend_logs_metadata": {"cost_center": "42"},
            "customer_tier": "gold"}
SINK_TOKEN = "acme-sink-token-never-in-events"


def sdk(gw: Any, key: str, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gw.client.base_url).rstrip("/") + "/v1", api_key=key, max_retries=0,
                              timeout=20, default_headers=headers or None)


def models(upstream: Any) -> list[dict[str, Any]]:
    params = {"api_base": upstream.url, "api_key": "up-key", "timeout": 10}
    return [
        {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o-mini", **params}},
        {"model_name": "chat-groq", "litellm_params": {"model": "groq/llama-attr", **params}},
        {"model_name": "embed", "litellm_params": {"model": "openai/text-embedding-3-small", **params}},
        {"model_name": "embed-azure", "litellm_params": {
            "model": "azure/my-embedder", "api_base": upstream.url.removesuffix("/v1"), "api_key": "az-key",
            "api_version": "2024-10-21", "timeout": 10}},
        {"model_name": "embed-down", "litellm_params": {"model": "openai/embed-500", **params}},
        {"model_name": "claude", "litellm_params": {"model": "anthropic/claude-3-5-haiku-latest",
                                                    "api_base": upstream.url, "api_key": "an-key"}},
    ]


async def team_with_sink(gw: Any, vars_for: Any, team_id: str, **team: Any) -> str:
    """A team whose acme sink delivers to ``/dest/<team_id>``; a key of that team with key metadata."""
    assert (await gw.admin("POST", "/team/new", json={"team_id": team_id, **team})).status_code == 200
    response = await gw.admin("POST", f"/team/{team_id}/callback", json={
        "callback_name": "acme", "callback_vars": vars_for(team_id, token=SINK_TOKEN)})
    assert response.status_code == 200, response.text
    return await gw.new_key(team_id=team_id, metadata={"owner": "ana", "tags": ["key-tag"],
                                                       "spend_logs_metadata": {"budget": "b1"}})


async def events_for(receiver: Any, team_id: str, count: int) -> list[dict[str, Any]]:
    assert await receiver.wait_for_async(lambda: len(receiver.events(f"/dest/{team_id}")) >= count)
    return sorted(receiver.events(f"/dest/{team_id}"), key=lambda e: e["startTime"])


async def test_chat_events_carry_request_key_and_team_attribution_and_upstream_gets_no_metadata(
        mock_upstream, receiver, vars_for, make_config, start) -> None:
    async with start(make_config(models=models(mock_upstream))) as gw:
        key = await team_with_sink(gw, vars_for, "attr-team", metadata={"department": "sales", "tags": ["team-tag"]})
        client = sdk(gw, key, **{"x-litellm-tags": "from-header, second"})
        rid = f"attr-{uuid.uuid4().hex}"
        await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                             metadata=METADATA, user="end-user-1",
                                             extra_headers={"x-request-id": rid})
        stream_rid = f"attr-s-{uuid.uuid4().hex}"
        stream = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], metadata={"session_id": "sess-2"},
            stream=True, extra_headers={"x-request-id": stream_rid})
        async for _ in stream:
            pass
        plain, streamed = await events_for(receiver, "attr-team", 2)
    # the upstream never saw metadata (OpenAI refuses it without store: true); the rest of the body went through
    for request_id in (rid, stream_rid):
        received = mock_upstream.find(request_id)
        assert received is not None and "metadata" not in received["body"]
        assert received["body"]["messages"] == [{"role": "user", "content": "hi"}]
    assert mock_upstream.find(rid)["body"]["user"] == "end-user-1"
    assert plain["call_type"] == "acompletion" and plain["end_user"] == "end-user-1"
    assert plain["request_tags"] == ["prod", "checkout", "from-header", "second", "key-tag", "team-tag"]
    meta = plain["metadata"]
    assert (meta["session_id"], meta["existing_trace_id"], meta["trace_name"], meta["generation_name"],
            meta["trace_user_id"], meta["generation_id"]) == (
        "sess-1", "trace-abc", "checkout-flow", "summarise", "user-7", "gen-9")
    assert meta["trace_metadata"] == {"env": "prod"}
    assert meta["requester_metadata"] == {"customer_tier": "gold"}
    assert meta["spend_logs_metadata"] == {"budget": "b1", "cost_center": "42"}
    assert meta["user_api_key_end_user_id"] == "end-user-1"
    assert meta["user_api_key_metadata"]["owner"] == "ana"
    assert meta["user_api_key_team_metadata"] == {"department": "sales", "tags": ["team-tag"]}
    assert "metadata" not in plain["model_parameters"] and "user" not in plain["model_parameters"]
    # negative control: the streamed call had no user, no tags of its own, a different session
    assert streamed["end_user"] is None and streamed["metadata"]["session_id"] == "sess-2"
    assert streamed["request_tags"] == ["from-header", "second", "key-tag", "team-tag"]
    assert streamed["metadata"]["requester_metadata"] is None
    for event in (plain, streamed):  # the sink's credentials and the key's logging config never enter an event
        assert SINK_TOKEN not in str(event) and "logging" not in (event["metadata"]["user_api_key_metadata"] or {})


async def test_metadata_is_forwarded_only_to_openai_with_store_true(
        mock_upstream, receiver, vars_for, make_config, start) -> None:
    async with start(make_config(models=models(mock_upstream))) as gw:
        client = sdk(gw, await gw.new_key())
        stored, not_stored, groq = (f"store-{i}-{uuid.uuid4().hex}" for i in range(3))
        await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                             metadata={"session_id": "s"}, store=True,
                                             extra_headers={"x-request-id": stored})
        await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                             metadata={"session_id": "s"}, store=False,
                                             extra_headers={"x-request-id": not_stored})
        await client.chat.completions.create(model="chat-groq", messages=[{"role": "user", "content": "x"}],
                                             metadata={"session_id": "s"}, store=True,
                                             extra_headers={"x-request-id": groq})
    assert mock_upstream.find(stored)["body"]["metadata"] == {"session_id": "s"}
    assert "metadata" not in mock_upstream.find(not_stored)["body"]
    assert "metadata" not in mock_upstream.find(groq)["body"]


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"metadata": {"blob": "x" * 1_000_000}}, "metadata"),
    ({"metadata": {"tags": "not-a-list"}}, "metadata"),
    ({"metadata": {"session_id": 12}}, "metadata"),
    ({"user": "u" * 600}, "user"),
])
async def test_oversized_or_mistyped_attribution_is_a_400_naming_the_field(
        mock_upstream, make_config, start, kwargs, param) -> None:
    async with start(make_config(models=models(mock_upstream))) as gw:
        client = sdk(gw, await gw.new_key())
        before = len(mock_upstream.requests)
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                                 **kwargs)
        assert caught.value.response.json()["error"]["param"] == param
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model="embed", input="x", extra_body=kwargs)  # the SDK has no metadata=
        assert caught.value.response.json()["error"]["param"] == param
        assert len(mock_upstream.requests) == before  # refused before any upstream call
        # negative control: the same call without the bad field goes through
        await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])


async def test_embeddings_through_the_pipeline_with_usage_cost_and_attribution(
        mock_upstream, receiver, vars_for, make_config, start) -> None:
    async with start(make_config(models=models(mock_upstream))) as gw:
        key = await team_with_sink(gw, vars_for, "embed-team")
        client = sdk(gw, key)
        rid = f"emb-{uuid.uuid4().hex}"
        answer = await client.embeddings.create(model="embed", input=["hello world", "bye"], dimensions=3,
                                                extra_body={"metadata": {"session_id": "emb-sess", "tags": ["rag"]}},
                                                user="u-emb", extra_headers={"x-request-id": rid})
        assert [len(d.embedding) for d in answer.data] == [3, 3]
        assert answer.data[1].embedding == pytest.approx([0.5, 0.51, 0.52])  # base64 decoded by the SDK
        assert answer.usage.prompt_tokens == 3
        floats = await client.embeddings.create(model="embed", input=[[1, 2, 3]], encoding_format="float")
        assert floats.data[0].embedding == pytest.approx([0.25, 0.26, 0.27, 0.28])
        azure_rid = f"emb-az-{uuid.uuid4().hex}"
        await client.embeddings.create(model="embed-azure", input="one two",
                                       extra_headers={"x-request-id": azure_rid})
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model="claude", input="x")
        error = caught.value.response.json()["error"]
        assert "anthropic" in error["message"] and "/v1/embeddings" in error["message"]
        assert error["param"] == "model"
        mock_upstream.on("embed-500", status=500)
        with pytest.raises(openai.InternalServerError):
            await client.embeddings.create(model="embed-down", input="x")
        events = await events_for(receiver, "embed-team", 5)
    received = mock_upstream.find(rid)
    assert received["path"] == "/v1/embeddings" and "metadata" not in received["body"]
    assert received["body"]["input"] == ["hello world", "bye"] and received["body"]["dimensions"] == 3
    assert received["headers"]["authorization"] == "Bearer up-key"
    azure = mock_upstream.find(azure_rid)
    assert azure["path"] == "/openai/deployments/my-embedder/embeddings" and azure["headers"]["api-key"] == "az-key"
    first, second, az, refused, failed = events
    for event in (first, second, az):
        assert event["call_type"] == "aembedding" and event["status"] == "success"
    assert first["messages"] == ["hello world", "bye"] and first["prompt_tokens"] == 3
    assert first["total_tokens"] == 3 and first["completion_tokens"] == 0
    assert first["response_cost"] == pytest.approx(3 * 0.02 / 1_000_000, rel=1e-6)  # text-embedding-3-small
    assert first["metadata"]["session_id"] == "emb-sess" and first["end_user"] == "u-emb"
    assert first["request_tags"] == ["rag", "key-tag"]
    assert first["model_parameters"] == {"dimensions": 3, "encoding_format": "base64"}
    assert az["custom_llm_provider"] == "azure"
    assert refused["status"] == failed["status"] == "failure"
    assert refused["call_type"] == failed["call_type"] == "aembedding"
    assert refused["response_cost"] == failed["response_cost"] == 0.0


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "embed"}, "input"), ({"model": "embed", "input": ""}, "input"), ({"model": "embed", "input": []}, "input"),
    ({"model": "embed", "input": [1, "a"]}, "input"), ({"model": "embed", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "embed", "input": "x", "encoding_format": "int8"}, "encoding_format"), ({"input": "x"}, "model"),
])
async def test_bad_embedding_bodies_are_400_naming_the_field(mock_upstream, make_config, start, body, param) -> None:
    async with start(make_config(models=models(mock_upstream))) as gw:
        key = await gw.new_key()
        response = await gw.client.post("/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
        ok = await gw.client.post("/embeddings", json={"model": "embed", "input": "x"},
                                  headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200  # negative control, without the /v1 prefix


async def test_embeddings_and_model_retrieve_respect_key_model_restrictions(mock_upstream, make_config,
                                                                            start) -> None:
    async with start(make_config(models=models(mock_upstream))) as gw:
        client = sdk(gw, await gw.new_key(models=["chat"]))
        with pytest.raises(openai.PermissionDeniedError):
            await client.embeddings.create(model="embed", input="x")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("embed")
        model = await client.models.retrieve("chat")
        assert (model.id, model.owned_by) == ("chat", "openai")
        with pytest.raises(openai.AuthenticationError):
            await sdk(gw, "sk-wrong").models.retrieve("chat")
        open_client = sdk(gw, await gw.new_key())
        assert (await open_client.models.retrieve("embed-azure")).owned_by == "azure"
        with pytest.raises(openai.NotFoundError):
            await open_client.models.retrieve("no-such-model")


async def test_the_clients_traceparent_goes_upstream_and_a_malformed_one_does_not(
        mock_upstream, make_config, start) -> None:
    """A W3C ``traceparent`` from the client reaches the upstream with the call (every provider adds it with its
    ``x-request-id``), so the provider's own traces join the client's; one that is not a trace context (a header
    injection attempt) is not forwarded, and a request without one sends none."""
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with start(make_config(models=models(mock_upstream))) as gw:
        key = await gw.new_key()
        sent = []
        for model, header in (("chat", trace), ("chat-groq", trace), ("chat", "00-x;x-evil: 1"), ("chat", None)):
            headers = {"Authorization": f"Bearer {key}", **({"traceparent": header} if header else {})}
            response = await gw.client.post("/v1/chat/completions", headers=headers, json={
                "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
            assert response.status_code == 200, response.text
            sent.append(mock_upstream.find(response.headers["x-request-id"])["headers"])
    assert sent[0].get("traceparent") == trace and sent[1].get("traceparent") == trace
    assert "traceparent" not in sent[2] and "x-evil" not in sent[2]
    assert "traceparent" not in sent[3]
