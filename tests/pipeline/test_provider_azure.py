"""The ``azure`` provider end to end: the ``openai`` SDK → the gateway → a fake speaking Azure OpenAI's wire shape.

The fake answers only at Azure's URLs (``/openai/deployments/{deployment}/chat/completions?api-version=...`` and
the v1 API's ``/openai/v1/chat/completions``), only with Azure's auth (``api-key``, or a Bearer Entra ID token),
sends Azure's ``prompt_filter_results`` chunk first in streams, and refuses flagged prompts with Azure's
content-filter error body. Beside it, a fake Entra ID token endpoint (``POST /{tenant}/oauth2/v2.0/token``)
speaks the OAuth 2.0 client-credentials grant as Entra does: a form body with ``grant_type``, ``client_id``,
``client_secret`` and ``scope``, a JSON answer with ``token_type``, ``expires_in`` and ``access_token``, and
Entra's ``invalid_client`` error (AADSTS7000215) for a wrong secret; the Azure fake accepts the tokens it issued.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web

from sluicegate.testing.waiting import wait_until_async

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

KEY = "azure-key-1"
TOKEN = "entra-token-1"
TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "app-client-id-1"
CLIENT_SECRET = "app-client-secret-value-1"
VERSION = "2024-10-21"

CONTENT_FILTER = {"error": {
    "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
    "type": None, "param": "prompt", "code": "content_filter", "status": 400,
    "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
        "hate": {"filtered": False, "severity": "safe"}, "violence": {"filtered": True, "severity": "high"}}}}}


class FakeAzure:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.token_requests: list[dict[str, str]] = []
        self.issued: list[str] = []
        self.token_lifetime = 3599
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.token_requests.append({k: str(v) for k, v in form.items()})
        if request.match_info["tenant"] != TENANT:
            return web.json_response({"error": "invalid_request", "error_description": "AADSTS90002: Tenant "
                                      "not found."}, status=400)
        if request.content_type != "application/x-www-form-urlencoded" or form.get("grant_type") != \
                "client_credentials" or form.get("scope") != "https://cognitiveservices.azure.com/.default":
            return web.json_response({"error": "invalid_request", "error_description": "AADSTS900144: bad "
                                      "request body"}, status=400)
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return web.json_response({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid "
                                      "client secret provided."}, status=401)
        token = f"entra-issued-{len(self.issued) + 1}-" + "t" * 16
        self.issued.append(token)
        return web.json_response({"token_type": "Bearer", "expires_in": self.token_lifetime,
                                  "ext_expires_in": self.token_lifetime, "access_token": token})

    def _answer(self, model: str, text: str) -> dict[str, Any]:
        return {"id": "chatcmpl-az1", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
                "choices": [{"index": 0, "finish_reason": "stop", "content_filter_results": {},
                             "message": {"role": "assistant", "content": f"{model} heard: {text}"}}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}

    async def handle(self, request: web.Request, deployment: str | None) -> web.StreamResponse:
        body = json.loads(await request.read())
        self.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers),
                              "body": body})
        bearer = request.headers.get("authorization")
        auth_ok = request.headers.get("api-key") == KEY or bearer in {f"Bearer {t}" for t in [TOKEN, *self.issued]}
        self.requests[-1]["bearer"] = bearer
        if not auth_ok:
            return web.json_response({"error": {"code": "401", "message": "Access denied due to invalid "
                                                 "subscription key or wrong API endpoint."}}, status=401)
        if deployment is not None and request.query.get("api-version") != VERSION:
            return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
        text = body["messages"][-1]["content"]
        if "violence" in text:
            return web.json_response(CONTENT_FILTER, status=400)
        name = deployment or body["model"]
        if not body.get("stream"):
            return web.json_response(self._answer(name, text))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        frames = [{"id": "", "object": "", "created": 0, "model": "", "choices": [],
                   "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}]
        for index, word in enumerate(f"{name} heard: {text}".split(" ")):
            frames.append({"id": "chatcmpl-az2", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                           "choices": [{"index": 0, "delta": {"content": word if index == 0 else " " + word},
                                        "finish_reason": None, "content_filter_results": {}}]})
        frames.append({"id": "chatcmpl-az2", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}})
        for frame in frames:
            await response.write(b"data: " + json.dumps(frame).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    async def deployments(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, request.match_info["deployment"])

    async def v1(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, None)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.deployments)
        app.router.add_post("/openai/v1/chat/completions", self.v1)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.token)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAzure]:
    server = FakeAzure()
    await server.start()
    yield server
    await server.stop()


def model(name: str, fake: FakeAzure, **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": "azure/gpt4o-prod", "api_base": fake.url,
                                                   "api_version": VERSION, "timeout": 10, **params}}


def sdk(gw: Any, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gw.client.base_url).rstrip("/") + "/v1", api_key=key, max_retries=0,
                              timeout=20)


async def test_deployment_api_with_api_key_and_the_event(fake, receiver, monkeypatch, make_config, start) -> None:
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/global")
    monkeypatch.setenv("ACME_TOKEN", "global-token")
    cfg = make_config(models=[model("az", fake, api_key=KEY, input_cost_per_token=0.01)],
                      litellm={"callbacks": ["acme"]})
    async with start(cfg) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="az", messages=[{"role": "user", "content": "hello"}],
                                                      logprobs=True)  # passes through: Azure takes OpenAI's params
        assert answer.choices[0].message.content == "gpt4o-prod heard: hello"
        seen = fake.requests[-1]
        assert seen["path"] == "/openai/deployments/gpt4o-prod/chat/completions"
        assert seen["query"] == {"api-version": VERSION} and seen["headers"]["api-key"] == KEY
        assert "authorization" not in {k.lower() for k in seen["headers"]}
        assert seen["body"]["model"] == "gpt4o-prod" and seen["body"]["logprobs"] is True
        stream = await client.chat.completions.create(model="az", stream=True,
                                                      messages=[{"role": "user", "content": "one two"}])
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "gpt4o-prod heard: one two"
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/global")) >= 2)
        logged = sorted(receiver.events("/dest/global"), key=lambda e: e["startTime"])
        assert [e["custom_llm_provider"] for e in logged] == ["azure", "azure"]
        assert [e["model"] for e in logged] == ["gpt4o-prod", "gpt4o-prod"]
        assert (logged[0]["prompt_tokens"], logged[0]["completion_tokens"]) == (9, 4)
        assert logged[0]["response_cost"] == pytest.approx(0.09)
        assert logged[1]["stream"] is True and logged[1]["status"] == "success"


async def test_v1_api_and_entra_id_token(fake, make_config, start) -> None:
    cfg = make_config(models=[model("az1", fake, api_version="v1", azure_ad_token=TOKEN),
                              model("az-preview", fake, api_version="preview", api_key=KEY)])
    async with start(cfg) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="az1", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "gpt4o-prod heard: hi"
        seen = fake.requests[-1]
        assert seen["path"] == "/openai/v1/chat/completions" and seen["query"] == {}
        assert seen["headers"]["Authorization"] == f"Bearer {TOKEN}" and "api-key" not in seen["headers"]
        await client.chat.completions.create(model="az-preview", messages=[{"role": "user", "content": "hi"}])
        assert fake.requests[-1]["query"] == {"api-version": "preview"}


async def test_content_filter_and_auth_errors_are_mapped(fake, make_config, start) -> None:
    cfg = make_config(models=[model("az", fake, api_key=KEY), model("az-bad", fake, api_key="wrong")])
    async with start(cfg) as gw:
        client = sdk(gw, await gw.new_key())
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as filtered:
                await client.chat.completions.create(model="az", stream=stream,
                                                     messages=[{"role": "user", "content": "violence please"}])
            body = filtered.value.body
            assert body["code"] == "content_filter" and body["type"] == "content_policy_violation"
            assert body["param"] == "prompt" and "content management policy" in body["message"]
            assert body["innererror"]["content_filter_result"]["violence"]["filtered"] is True
        with pytest.raises(openai.AuthenticationError) as denied:
            await client.chat.completions.create(model="az-bad", messages=[{"role": "user", "content": "hi"}])
        assert "invalid subscription key" in denied.value.body["message"]
        # negative control: a clean prompt on the same model answers
        ok = await client.chat.completions.create(model="az", messages=[{"role": "user", "content": "peace"}])
        assert ok.choices[0].message.content == "gpt4o-prod heard: peace"


def entra(name: str, fake: FakeAzure, **params: Any) -> dict[str, Any]:
    return model(name, fake, **{"tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                                "azure_authority_host": fake.url, **params})


async def test_entra_id_client_credentials_token_is_fetched_cached_and_refreshed(fake, register_secret,
                                                                                 make_config, start) -> None:
    register_secret(CLIENT_SECRET)
    fake.token_lifetime = 2  # refreshed half-way through a life this short (five minutes early for real ones)
    async with start(make_config(models=[entra("az-entra", fake)])) as gw:
        assert len(fake.token_requests) == 1  # fetched when the gateway started
        assert fake.token_requests[0]["client_id"] == CLIENT_ID
        client = sdk(gw, await gw.new_key())
        for _ in range(3):  # cached: requests do not go to the token endpoint
            answer = await client.chat.completions.create(model="az-entra",
                                                          messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content == "gpt4o-prod heard: hi"
        assert len(fake.token_requests) == 1
        assert fake.requests[-1]["bearer"] == f"Bearer {fake.issued[0]}" and "api-key" not in fake.requests[-1]["headers"]
        # the background refresh, before the first token expires
        await wait_until_async(lambda: len(fake.issued) >= 2, timeout=10, what="the token refreshed")
        stream = await client.chat.completions.create(model="az-entra", stream=True,
                                                      messages=[{"role": "user", "content": "one two"}])
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]).endswith("one two")
        assert fake.requests[-1]["bearer"] in {f"Bearer {t}" for t in fake.issued[1:]}


async def test_entra_id_wrong_secret_is_a_503_naming_entra_not_the_secret(fake, register_secret, make_config,
                                                                          start) -> None:
    """Negative control: a refused client secret never reaches Azure, and the answer says why without it."""
    register_secret("wrong-client-secret-value")
    cfg = make_config(models=[entra("az-entra", fake), entra("az-wrong", fake, client_secret="wrong-client-secret-value")])
    async with start(cfg) as gw:
        client = sdk(gw, await gw.new_key())
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="az-wrong", messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 503 and "AADSTS7000215" in refused.value.body["message"]
        assert "wrong-client-secret-value" not in json.dumps(refused.value.body)
        assert not any(r["path"].startswith("/openai") and r.get("bearer") is None and "api-key" not in r["headers"]
                       for r in fake.requests)
        ok = await client.chat.completions.create(model="az-entra", messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].message.content == "gpt4o-prod heard: hi"


async def test_entra_id_half_configured_is_a_start_up_error(fake, make_config, start) -> None:
    from sluicegate.config import ConfigError

    cfg = make_config(models=[model("az", fake, tenant_id=TENANT, client_id=CLIENT_ID)])
    with pytest.raises(ConfigError) as refused:
        async with start(cfg):
            pass
    assert "model_list[0].litellm_params.client_secret: required for Entra ID client credentials" in str(refused.value)
