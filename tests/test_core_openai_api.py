"""The OpenAI-compatible API through the official ``openai`` SDK, against a real running gateway.

One gateway per backend (SQLite, PostgreSQL) runs under uvicorn in this process; a second one runs as a
``python -m sluicegate serve`` subprocess on the same database for the cross-process tests. The upstream is a
real OpenAI-compatible HTTP server on loopback (``mock_upstream``) that records what it receives.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest

from sqlalchemy.engine import make_url

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
DB_PASSWORD = "db-pass-must-not-be-printed"


@pytest.fixture(scope="module")
def gw(module_db_url: str, make_config: Any, write_config: Any, mock_upstream: Any, module_serve_app: Any,
       module_gateway_process: Any, master_key: str) -> SimpleNamespace:
    from sluicegate.app import create_app
    from sluicegate.config import parse_settings

    config = make_config(database_url=module_db_url, upstream=mock_upstream.url)
    served = module_serve_app(create_app(parse_settings(config)))
    # The second process starts now (after this one migrated the schema) so its start-up overlaps the tests
    # below; only the cross-process tests wait for it. The unknown sections check the one-line warning.
    other_config = {**config, "router_settings": {"routing_strategy": "simple-shuffle", "enable_pre_call_checks": True},
                    "environment_variables": {"X": "1"}}
    if module_db_url.startswith("postgresql"):  # trust auth ignores it; start-up output must mask it
        url = make_url(module_db_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)
        other_config["general_settings"] = {**config["general_settings"], "database_url": url}
    other = module_gateway_process(write_config(other_config), wait=False)
    admin = httpx.Client(base_url=served.url, headers={"authorization": f"Bearer {master_key}"}, timeout=30)

    def new_key(**body: Any) -> dict[str, Any]:
        response = admin.post("/key/generate", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    return SimpleNamespace(url=served.url, db_url=module_db_url, other=other, admin=admin, new_key=new_key,
                           key=new_key(key_alias="open")["key"],
                           mock_only_key=new_key(key_alias="mock-only", models=["gpt-mock"])["key"])


def sdk(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def client(gw: SimpleNamespace) -> openai.OpenAI:
    return sdk(gw.url, gw.key)


def rid() -> str:
    return "test-" + uuid.uuid4().hex


def assert_openai_error(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in json.dumps(body)
    return error


# ----------------------------------------------------------------------------------------------- chat
def test_chat_completion_relayed_from_upstream(gw: SimpleNamespace, client: openai.OpenAI, mock_upstream: Any,
                                               upstream_key: str) -> None:
    request_id = rid()
    completion = client.chat.completions.create(
        model="gpt-up", messages=[{"role": "user", "content": "hello there"}], extra_headers={"x-request-id": request_id})
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id.startswith("chatcmpl-mock-")
    assert completion.usage is not None and completion.usage.total_tokens == 7 + 3
    received = mock_upstream.find(request_id)
    assert received is not None, "the upstream never saw the request"
    assert received["body"]["model"] == "up-model"  # model_name mapped to the upstream model
    # The upstream sees the deployment's key, never the caller's virtual key.
    assert received["headers"]["authorization"] == f"Bearer {upstream_key}"
    assert gw.key not in json.dumps(received["headers"]) and gw.key not in received["raw"].decode()


def test_chat_completion_offline_mock_response(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-mock", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "Hello from the offline model"
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_chat_without_v1_prefix(gw: SimpleNamespace) -> None:
    response = httpx.post(f"{gw.url}/chat/completions", headers={"authorization": f"Bearer {gw.key}"},
                          json={"model": "gpt-up", "messages": [{"role": "user", "content": "plain"}]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: plain"


@pytest.mark.parametrize("model", ["gpt-up", "gpt-mock"])
def test_streaming_assembles_content_and_keeps_usage(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "stream me please"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = "echo: stream me please" if model == "gpt-up" else "Hello from the offline model"
    assert content == expected
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "not streamed in pieces"
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage and usage[-1].total_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)


@pytest.mark.parametrize("model", ["gpt-up", "gpt-mock"])
def test_streaming_wire_format_ends_with_done(gw: SimpleNamespace, model: str) -> None:
    lines: list[str] = []
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {gw.key}"},
                      json={"model": model, "stream": True, "messages": [{"role": "user", "content": "a b c"}]},
                      timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.strip()]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert sum(1 for p in payloads if p.get("usage")) <= 1


def test_streaming_relays_chunks_as_they_arrive(client: openai.OpenAI) -> None:
    """Each chunk reaches the client while the upstream is still producing the next (no buffering)."""
    started = time.monotonic()
    arrivals: list[float] = []
    stream = client.chat.completions.create(model="gpt-up", messages=[{"role": "user", "content": "one two three"}],
                                            stream=True, extra_body={"mock": {"chunk_delay": 0.3}})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 4
    total = time.monotonic() - started
    assert total >= 1.2  # the upstream took its time ...
    assert arrivals[0] < total - 0.8, (arrivals, total)  # ... and the first words did not wait for the rest


# ----------------------------------------------------------------------------------------------- models
def test_models_lists_every_model_for_an_unrestricted_key(gw: SimpleNamespace, client: openai.OpenAI,
                                                          master_key: str) -> None:
    everything = ["gpt-down", "gpt-mock", "gpt-slow", "gpt-up"]
    assert sorted(m.id for m in client.models.list()) == everything
    assert sorted(m.id for m in sdk(gw.url, master_key).models.list()) == everything


def test_models_filtered_by_key_models(gw: SimpleNamespace) -> None:
    assert [m.id for m in sdk(gw.url, gw.mock_only_key).models.list()] == ["gpt-mock"]
    raw = httpx.get(f"{gw.url}/models", headers={"authorization": f"Bearer {gw.mock_only_key}"}, timeout=30)
    assert raw.status_code == 200 and [m["id"] for m in raw.json()["data"]] == ["gpt-mock"]


def test_key_limited_to_models_is_refused_other_models(gw: SimpleNamespace) -> None:
    limited = sdk(gw.url, gw.mock_only_key)
    assert limited.chat.completions.create(model="gpt-mock", messages=[{"role": "user", "content": "ok"}]).choices
    with pytest.raises(openai.PermissionDeniedError) as caught:
        limited.chat.completions.create(model="gpt-up", messages=[{"role": "user", "content": "no"}])
    assert caught.value.status_code == 403
    error = assert_openai_error(caught.value.response.json())
    assert error["param"] == "model"


# ----------------------------------------------------------------------------------------------- errors
def test_unknown_model_is_400_and_lists_nothing_secret(client: openai.OpenAI, mock_upstream: Any,
                                                       upstream_key: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 400
    body = caught.value.response.json()
    error = assert_openai_error(body)
    assert error["param"] == "model" and "no-such-model" in error["message"]
    assert upstream_key not in caught.value.response.text
    assert mock_upstream.url not in caught.value.response.text


def test_wrong_key_is_401(gw: SimpleNamespace) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(gw.url, "sk-not-a-real-key-123456").chat.completions.create(
            model="gpt-mock", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 401
    assert_openai_error(caught.value.response.json())


@pytest.mark.parametrize(("status", "exc"), [(400, openai.BadRequestError), (404, openai.NotFoundError),
                                             (429, openai.RateLimitError), (500, openai.InternalServerError),
                                             (503, openai.InternalServerError)])
def test_upstream_error_relayed_with_status_and_openai_body(client: openai.OpenAI, status: int,
                                                            exc: type[openai.APIStatusError]) -> None:
    upstream_error = {"error": {"message": f"upstream says {status}", "type": "upstream_kind", "param": "temperature",
                                "code": f"code_{status}"}}
    with pytest.raises(exc) as caught:
        client.chat.completions.create(model="gpt-up", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"mock": {"status": status, "body": upstream_error}})
    assert caught.value.status_code == status
    error = assert_openai_error(caught.value.response.json())
    assert error["message"] == f"upstream says {status}"
    assert error["code"] == f"code_{status}"


def test_upstream_error_with_non_json_body_gets_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-up", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"mock": {"status": 502, "raw": "<html>Bad Gateway</html>"}})
    assert caught.value.status_code == 502
    error = assert_openai_error(caught.value.response.json())
    assert "502" in error["message"]


def test_upstream_error_relayed_when_streaming(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        list(client.chat.completions.create(model="gpt-up", messages=[{"role": "user", "content": "x"}],
                                            stream=True, extra_body={"mock": {"status": 429}}))
    assert caught.value.status_code == 429
    assert assert_openai_error(caught.value.response.json())["message"] == "mock upstream error 429"


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_unreachable_is_502(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        result = client.chat.completions.create(model="gpt-down", messages=[{"role": "user", "content": "x"}],
                                                stream=stream)
        list(result) if stream else None
    assert caught.value.status_code == 502
    assert_openai_error(caught.value.response.json())


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_slower_than_model_timeout_is_504_in_bounded_time(client: openai.OpenAI, stream: bool) -> None:
    # gpt-slow has timeout 0.5 s; the upstream would answer after 5 s.
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        result = client.chat.completions.create(model="gpt-slow", messages=[{"role": "user", "content": "x"}],
                                                stream=stream, extra_body={"mock": {"delay": 5}})
        list(result) if stream else None
    elapsed = time.monotonic() - started
    assert caught.value.status_code == 504
    assert_openai_error(caught.value.response.json())
    assert elapsed < 3.0, f"answered after {elapsed:.2f}s; the model's timeout is 0.5s"


def test_stream_stalling_mid_way_ends_within_bounded_time(gw: SimpleNamespace) -> None:
    """Headers arrive in time but the next chunk does not: the stream must end, never hang, and never fake [DONE]."""
    started = time.monotonic()
    lines: list[str] = []
    with contextlib.suppress(httpx.HTTPError), httpx.stream(
            "POST", f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {gw.key}"},
            json={"model": "gpt-slow", "stream": True, "messages": [{"role": "user", "content": "a b c d"}],
                  "mock": {"chunk_delay": 3}}, timeout=30) as response:
        assert response.status_code == 200
        lines.extend(line for line in response.iter_lines() if line.strip())
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"stream hung for {elapsed:.2f}s; the model's timeout is 0.5s"
    assert "data: [DONE]" not in lines


def test_same_slow_model_answers_when_upstream_is_fast_enough(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-slow", messages=[{"role": "user", "content": "quick"}],
                                                extra_body={"mock": {"delay": 0.05}})
    assert completion.choices[0].message.content == "echo: quick"


# ----------------------------------------------------------------------------------------------- pass-through
def test_tools_response_format_and_unknown_fields_pass_through_untouched(client: openai.OpenAI,
                                                                         mock_upstream: Any) -> None:
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city", "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False}}}]
    response_format = {"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True,
        "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}
    extra = {"vendor_knob": {"nested": [1, 2.5, None, "x"], "flag": False}, "top_k": 40, "repetition_penalty": 1.1}
    request_id = rid()
    client.chat.completions.create(
        model="gpt-up", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather?"}],
        tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}},
        response_format=response_format, temperature=0.25, seed=7, user="end-user-1", extra_body=extra,
        extra_headers={"x-request-id": request_id})
    body = mock_upstream.find(request_id)["body"]
    assert body["tools"] == tools
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == response_format
    for name, value in extra.items():
        assert body[name] == value, name
    assert body["temperature"] == 0.25 and body["seed"] == 7 and body["user"] == "end-user-1"
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather?"}]
    assert body["model"] == "up-model"


# ----------------------------------------------------------------------------------------------- request ids
def test_request_id_echoed_and_forwarded(client: openai.OpenAI, mock_upstream: Any) -> None:
    request_id = rid()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-up", messages=[{"role": "user", "content": "x"}], extra_headers={"x-request-id": request_id})
    assert raw.headers["x-request-id"] == request_id
    assert mock_upstream.find(request_id) is not None


def test_request_id_generated_when_absent(gw: SimpleNamespace, mock_upstream: Any) -> None:
    ids = set()
    for _ in range(2):
        response = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {gw.key}"},
                              json={"model": "gpt-up", "messages": [{"role": "user", "content": "x"}]}, timeout=30)
        assert response.status_code == 200
        ids.add(response.headers.get("x-request-id"))
    assert None not in ids and len(ids) == 2, ids
    for generated in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        assert mock_upstream.find(generated) is not None  # the same id travelled upstream


def test_unusable_request_id_is_replaced(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-mock", messages=[{"role": "user", "content": "x"}], extra_headers={"x-request-id": "r" * 500})
    assert re.fullmatch(r"[0-9a-f]{32}", raw.headers["x-request-id"])


def test_request_id_on_error_responses(gw: SimpleNamespace) -> None:
    request_id = rid()
    response = httpx.post(f"{gw.url}/v1/chat/completions", headers={"x-request-id": request_id},
                          json={"model": "gpt-up", "messages": [{"role": "user", "content": "x"}]}, timeout=30)
    assert response.status_code == 401
    assert response.headers.get("x-request-id") == request_id


# ----------------------------------------------------------------------------------------------- body limit
@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_over_real_http_is_413_json(gw: SimpleNamespace, mock_upstream: Any, chunked: bool) -> None:
    """> 8 MiB is refused before it reaches the upstream, with or without a Content-Length."""
    request_id = rid()
    payload = b'{"model": "gpt-up", "messages": [{"role": "user", "content": "' + b"x" * (9 * 1024 * 1024) + b'"}]}'

    def pieces() -> Any:
        for start in range(0, len(payload), 1024 * 1024):
            yield payload[start:start + 1024 * 1024]

    response = httpx.post(f"{gw.url}/v1/chat/completions", content=pieces() if chunked else payload,
                          headers={"authorization": f"Bearer {gw.key}", "content-type": "application/json",
                                   "x-request-id": request_id}, timeout=30)
    assert response.status_code == 413, response.text[:300]
    error = assert_openai_error(response.json())
    assert error["param"] == "body"
    assert mock_upstream.find(request_id) is None
    # Negative control: just under the limit goes through.
    small = b'{"model": "gpt-up", "messages": [{"role": "user", "content": "' + b"y" * (7 * 1024 * 1024) + b'"}]}'
    ok = httpx.post(f"{gw.url}/v1/chat/completions", content=small, timeout=30,
                    headers={"authorization": f"Bearer {gw.key}", "content-type": "application/json"})
    assert ok.status_code == 200, ok.text[:300]


# ----------------------------------------------------------------------------------------------- health
def test_health_liveliness_and_readiness_need_no_key(gw: SimpleNamespace) -> None:
    live = httpx.get(f"{gw.url}/health/liveliness", timeout=30)
    assert live.status_code == 200 and live.json()["status"] == "healthy"
    ready = httpx.get(f"{gw.url}/health/readiness", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "healthy" and ready.json()["db"] == "connected"


# ----------------------------------------------------------------------------------------------- two processes
def _status(base: str, key: str) -> int:
    return httpx.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "gpt-mock", "messages": [{"role": "user", "content": "x"}]}, timeout=30).status_code


def _refused_within_one_second(base: str, key: str, since: float) -> float:
    """Poll ``base`` until ``key`` gets 401; return the seconds since ``since`` (fails after 1 s)."""
    deadline = since + 1.0
    while True:
        if _status(base, key) == 401:
            return time.monotonic() - since
        if time.monotonic() > deadline:
            raise AssertionError(f"{base} still accepts the key {time.monotonic() - since:.2f}s after the change")
        time.sleep(0.02)  # deliberate: polls a condition under a deadline


@pytest.fixture(scope="module")
def other(gw: SimpleNamespace) -> Any:
    return gw.other.wait_ready(timeout=90)


def test_startup_output_warns_once_for_unsupported_keys_and_masks_the_db_password(other: Any) -> None:
    lines = [line for line in other.stderr.splitlines() if "does not support" in line]
    assert len(lines) == 1, other.stderr
    assert "router_settings.enable_pre_call_checks" in lines[0] and "environment_variables" in lines[0]
    assert f"Sluicegate listening on http://127.0.0.1:{other.port}" in other.stdout
    assert "database: " in other.stdout
    assert DB_PASSWORD not in other.stdout + other.stderr
    if "postgresql" in other.stdout:
        assert "***" in other.stdout  # the password is there, masked


@pytest.mark.parametrize("direction", ["in-process deletes", "subprocess deletes"])
def test_key_deleted_in_one_process_is_refused_by_the_other_within_1s(gw: SimpleNamespace, other: Any,
                                                                      master_key: str, direction: str) -> None:
    key = gw.new_key(key_alias=f"shared-{direction}")["key"]
    deleter, checker = (gw.url, other.url) if direction == "in-process deletes" else (other.url, gw.url)
    # Negative control: both processes accept the key first (and so have it cached).
    assert _status(checker, key) == 200 and _status(deleter, key) == 200
    response = httpx.post(f"{deleter}/key/delete", json={"keys": [key]},
                          headers={"authorization": f"Bearer {master_key}"}, timeout=30)
    assert response.status_code == 200, response.text
    deleted_at = time.monotonic()
    assert _status(deleter, key) == 401  # the next request in the deleting process
    _refused_within_one_second(checker, key, deleted_at)


def test_key_blocked_in_one_process_is_refused_by_the_other_within_1s(gw: SimpleNamespace, other: Any,
                                                                      master_key: str) -> None:
    key = gw.new_key(key_alias="shared-blocked")["key"]
    assert _status(other.url, key) == 200
    response = httpx.post(f"{gw.url}/key/update", json={"key": key, "blocked": True},
                          headers={"authorization": f"Bearer {master_key}"}, timeout=30)
    assert response.status_code == 200, response.text
    _refused_within_one_second(other.url, key, time.monotonic())
    # ... and unblocking brings it back in the other process as well.
    httpx.post(f"{gw.url}/key/update", json={"key": key, "blocked": False},
               headers={"authorization": f"Bearer {master_key}"}, timeout=30).raise_for_status()
    deadline = time.monotonic() + 1.0
    while _status(other.url, key) != 200:
        assert time.monotonic() < deadline, "unblocked key still refused by the other process after 1s"
        time.sleep(0.02)  # deliberate: polls a condition under a deadline
