"""The ``gemini`` and ``vertex_ai`` providers end to end: the official ``openai`` SDK → the gateway → a fake Google.

No real Google endpoint can run here, so :class:`FakeGoogle` serves on loopback what a real one would check:

- the Gemini API (``/v1beta/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``) refusing
  any request without the right ``x-goog-api-key`` header;
- Vertex AI (``/v1/projects/{project}/locations/{location}/publishers/{google|anthropic}/models/{model}:...``)
  refusing any request without a bearer token it issued and that has not expired, or for another project or
  location;
- an OAuth 2.0 token endpoint (the ``token_uri`` of a service-account key made in the test with a fresh RSA key)
  that verifies the JWT assertion's signature with the key's public half (``google.auth.jwt.decode``), its
  audience, issuer and scope, so google-auth really signs and exchanges;
- every Gemini request validated with the official ``google-genai`` SDK's types (``Content``, ``Tool``,
  ``ToolConfig``, ``GenerationConfig``, unknown keys refused, base64 decoded) and every answer built from them;
  Claude requests on Vertex validated with the ``anthropic`` SDK's request types.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import anthropic.types as at
import google.auth.jwt
import openai
import pytest
from aiohttp import web
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming, MessageCreateParamsStreaming
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.genai import types as gt
from pydantic import TypeAdapter

from sluicegate.testing import wait_until

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

API_KEY = "AIza-gemini-test-key-0001"
MODEL = "gemini-test-flash"
CLAUDE = "claude-test-vertex"
PROJECT = "acme-proj-1"
LOCATION = "europe-west4"
SIGNATURE = base64.b64encode(b"signature-of-the-first-call").decode()
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"

_CONTENTS = TypeAdapter(list[gt.Content])
_TOOLS = TypeAdapter(list[gt.Tool])
_SAFETY = TypeAdapter(list[gt.SafetySetting])
_CLAUDE_REQUEST = {False: TypeAdapter(MessageCreateParamsNonStreaming), True: TypeAdapter(MessageCreateParamsStreaming)}
# the inline media types Gemini documents (images, audio, video, PDF and text documents)
GEMINI_MEDIA = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif", "audio/wav", "audio/mp3",
                "audio/aiff", "audio/aac", "audio/ogg", "audio/flac", "video/", "application/pdf", "text/")
REQUEST_KEYS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings"}


def validate_gemini_request(body: dict[str, Any]) -> None:
    """Raise unless ``body`` is a ``GenerateContentRequest`` by google-genai's types (JSON mode: base64 decoded).

    The SDK only warns about an enum value it does not know (for forward compatibility); the API refuses one, so
    the warning is an error here."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _validate_gemini_request(body)


def _validate_gemini_request(body: dict[str, Any]) -> None:
    unknown = set(body) - REQUEST_KEYS
    if unknown:
        raise ValueError(f"unknown request keys {sorted(unknown)}")
    contents = _CONTENTS.validate_json(json.dumps(body["contents"]))
    if not contents or any(c.role not in ("user", "model") or not c.parts for c in contents):
        raise ValueError("every content needs role user or model and at least one part")
    if "systemInstruction" in body:
        gt.Content.model_validate_json(json.dumps(body["systemInstruction"]))
    if "tools" in body:
        for tool in _TOOLS.validate_json(json.dumps(body["tools"])):
            for declaration in tool.function_declarations or ():
                if declaration.parameters is not None and declaration.parameters_json_schema is not None:
                    raise ValueError("parameters and parametersJsonSchema are exclusive")
    if "toolConfig" in body:
        gt.ToolConfig.model_validate_json(json.dumps(body["toolConfig"]))
    if "generationConfig" in body:
        config = gt.GenerationConfig.model_validate_json(json.dumps(body["generationConfig"]))
        # the API's rules beyond the types: logprobs only with responseLogprobs, and at most 20 of them
        if config.logprobs is not None and (not config.response_logprobs or not 0 <= config.logprobs <= 20):
            raise ValueError("logprobs is only valid with responseLogprobs and must be in [0, 20]")
    for content in contents:  # inline data only of the media types Gemini takes, with a type on every part
        for part in content.parts or ():
            if part.inline_data is not None and not (part.inline_data.mime_type or "").startswith(GEMINI_MEDIA):
                raise ValueError(f"Unsupported MIME type: {part.inline_data.mime_type}")
            if part.inline_data is not None and not part.inline_data.data:
                raise ValueError("inlineData.data is required")
            if part.file_data is not None and not part.file_data.file_uri:
                raise ValueError("fileData.fileUri is required")
    if "safetySettings" in body:
        _SAFETY.validate_json(json.dumps(body["safetySettings"]))


def _dump(model: Any) -> str:
    return model.model_dump_json(by_alias=True, exclude_none=True)


def last_user_text(body: dict[str, Any]) -> str:
    parts = body["contents"][-1]["parts"]
    return " ".join(p["text"] for p in parts if "text" in p)


class FakeGoogle:
    """Gemini API, Vertex AI and an OAuth token endpoint on one loopback server."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.invalid: list[str] = []
        self.token_requests: list[dict[str, Any]] = []
        self.tokens: dict[str, float] = {}  # issued token -> expiry (monotonic)
        self.expires_in = 3600
        self.token_gate = asyncio.Event()
        self.token_gate.set()
        self.gate = asyncio.Event()  # the slow stream waits here after its first event
        self.public_keys: dict[str, bytes] = {}  # client_email -> PEM public key
        self.url = ""
        self._runner: web.AppRunner | None = None

    # service accounts ------------------------------------------------------------------------------
    def service_account(self, email: str = "gw@acme-proj-1.iam.gserviceaccount.com",
                        project: str | None = PROJECT) -> dict[str, Any]:
        """A real service-account key (fresh RSA key) whose token_uri is this fake."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        self.public_keys[email] = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        info = {"type": "service_account", "private_key_id": "kid-1", "private_key": pem, "client_email": email,
                "client_id": "1234567890", "token_uri": f"{self.url}/token",
                "universe_domain": "googleapis.com"}
        if project:
            info["project_id"] = project
        return info

    async def token(self, request: web.Request) -> web.Response:
        await self.token_gate.wait()
        form = await request.post()
        self.token_requests.append(dict(form))
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        assertion = str(form.get("assertion") or "")
        try:
            unverified = google.auth.jwt.decode(assertion, verify=False)
            public = self.public_keys[unverified["iss"]]
            # google-auth always addresses the assertion to Google's token endpoint, whatever token_uri says
            claims = google.auth.jwt.decode(assertion, certs=public, audience=GOOGLE_TOKEN_AUDIENCE)
        except Exception as exc:  # a bad signature, audience or an unknown account
            return web.json_response({"error": "invalid_grant", "error_description": type(exc).__name__},
                                     status=400)
        if SCOPE not in str(claims.get("scope", "")).split():
            return web.json_response({"error": "invalid_scope"}, status=400)
        token = f"ya29.fake-{len(self.tokens) + 1}-{int(time.time() * 1000)}"
        self.tokens[token] = time.monotonic() + self.expires_in
        return web.json_response({"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})

    def _bearer_ok(self, request: web.Request) -> bool:
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ")
        return header.startswith("Bearer ") and self.tokens.get(token, 0) > time.monotonic()

    # Gemini and Vertex -----------------------------------------------------------------------------
    @staticmethod
    def _error(status: int, google_status: str, message: str) -> web.Response:
        return web.json_response({"error": {"code": status, "message": message, "status": google_status}},
                                 status=status)

    async def gemini(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["tail"].partition(":")
        if "key" in request.query or request.headers.get("x-goog-api-key") != API_KEY:
            self.requests.append({"path": request.path, "headers": dict(request.headers), "body": None})
            return self._error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
        return await self._generate(request, model, method)

    async def vertex(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        model, _, method = info["tail"].partition(":")
        if not self._bearer_ok(request):
            self.requests.append({"path": request.path, "headers": dict(request.headers), "body": None})
            return self._error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if (info["project"], info["location"]) != (PROJECT, LOCATION):
            return self._error(403, "PERMISSION_DENIED", "Permission denied on resource project.")
        if info["publisher"] == "anthropic":
            return await self._claude(request, model, method)
        if info["publisher"] != "google":
            return self._error(404, "NOT_FOUND", "Publisher model not found.")
        return await self._generate(request, model, method)

    async def _generate(self, request: web.Request, model: str, method: str) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers),
                              "body": body})
        if model != MODEL:
            return self._error(404, "NOT_FOUND", f"models/{model} is not found")
        if method not in ("generateContent", "streamGenerateContent"):
            return self._error(404, "NOT_FOUND", "unknown method")
        if method == "streamGenerateContent" and request.query.get("alt") != "sse":
            return self._error(400, "INVALID_ARGUMENT", "this fake streams only with alt=sse")
        try:
            validate_gemini_request(body)
            self._check_thought_signatures(body)
        except Exception as exc:
            self.invalid.append(str(exc)[:300])
            return self._error(400, "INVALID_ARGUMENT", str(exc)[:300])
        text = last_user_text(body)
        if text == "quota":
            return self._error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).")
        events = self._answer(body)
        if method == "generateContent":
            return web.Response(body=_dump(events[-1] if len(events) == 1 else self._merged(events)),
                                content_type="application/json")
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for number, event in enumerate(events):
            await response.write(f"data: {_dump(event)}\r\n\r\n".encode())
            if text == "slow" and number == 0:
                await self.gate.wait()
            if text == "break" and number == 0:
                await response.write(b'data: {"error": {"code": 503, "message": "The model is overloaded.", '
                                     b'"status": "UNAVAILABLE"}}\r\n\r\n')
                return response
        return response

    @staticmethod
    def _check_thought_signatures(body: dict[str, Any]) -> None:
        """As thinking models do: a model turn's first function call must give back its thought signature."""
        for content in body["contents"]:
            calls = [p for p in content["parts"] if "functionCall" in p]
            if content["role"] == "model" and calls and calls[0].get("thoughtSignature") != SIGNATURE:
                raise ValueError("Function call is missing a thought_signature in functionCall parts.")

    def _usage(self) -> gt.GenerateContentResponseUsageMetadata:
        return gt.GenerateContentResponseUsageMetadata(
            prompt_token_count=11, candidates_token_count=7, thoughts_token_count=3, cached_content_token_count=4,
            total_token_count=21)

    def _answer(self, body: dict[str, Any]) -> list[gt.GenerateContentResponse]:
        """The answer as stream events (a non-streamed answer is them merged)."""
        text = last_user_text(body)
        parts = body["contents"][-1]["parts"]
        usage = self._usage()
        if text == "blocked":
            return [gt.GenerateContentResponse(prompt_feedback=gt.GenerateContentResponsePromptFeedback(
                block_reason=gt.BlockedReason.SAFETY, safety_ratings=[gt.SafetyRating(
                    category=gt.HarmCategory.HARM_CATEGORY_DANGEROUS_CONTENT, probability=gt.HarmProbability.HIGH,
                    blocked=True)]), usage_metadata=gt.GenerateContentResponseUsageMetadata(
                prompt_token_count=5, total_token_count=5), model_version=MODEL, response_id="resp-blocked")]

        config = body.get("generationConfig") or {}

        def logprobs(content_parts: list[gt.Part]) -> gt.LogprobsResult | None:
            """One step per answer token (a word here), chosen at -0.25, with ``logprobs`` top candidates."""
            tokens = [p.text for p in content_parts if p.text and not p.thought]
            if not config.get("responseLogprobs") or not tokens:
                return None
            top = config.get("logprobs") or 0
            return gt.LogprobsResult(
                chosen_candidates=[gt.LogprobsResultCandidate(token=t, token_id=n, log_probability=-0.25)
                                   for n, t in enumerate(tokens)],
                top_candidates=[gt.LogprobsResultTopCandidates(candidates=[
                    gt.LogprobsResultCandidate(token=t if k == 0 else f"{t.strip()}~{k}", token_id=k,
                                               log_probability=-0.25 * (k + 1)) for k in range(top)])
                    for t in tokens] if top else None)

        def event(content_parts: list[gt.Part], finish: gt.FinishReason | None = None,
                  with_usage: bool = False) -> gt.GenerateContentResponse:
            return gt.GenerateContentResponse(
                candidates=[gt.Candidate(content=gt.Content(role="model", parts=content_parts), index=0,
                                         finish_reason=finish, logprobs_result=logprobs(content_parts))],
                usage_metadata=usage if with_usage else None, model_version=MODEL, response_id="resp-1")

        if body.get("tools") and not any("functionResponse" in p for p in parts):
            return [event([gt.Part(text="Checking.")]), event([
                gt.Part(function_call=gt.FunctionCall(name="get_weather", args={"city": "Paris"}),
                        thought_signature=base64.b64decode(SIGNATURE)),
                gt.Part(function_call=gt.FunctionCall(name="get_weather", args={"city": "Rome"}))],
                gt.FinishReason.STOP, True)]
        if any("functionResponse" in p for p in parts):
            results = [p["functionResponse"]["response"] for p in parts if "functionResponse" in p]
            return [event([gt.Part(text=f"Got {json.dumps(results)}")], gt.FinishReason.STOP, True)]
        if text == "unsafe":
            return [event([gt.Part(text="Here is how")]), gt.GenerateContentResponse(
                candidates=[gt.Candidate(index=0, finish_reason=gt.FinishReason.SAFETY, safety_ratings=[
                    gt.SafetyRating(category=gt.HarmCategory.HARM_CATEGORY_HARASSMENT,
                                    probability=gt.HarmProbability.HIGH, blocked=True)])],
                usage_metadata=usage, model_version=MODEL, response_id="resp-1")]
        finish = gt.FinishReason.MAX_TOKENS if text == "long" else gt.FinishReason.STOP
        words = f"You said: {text}".split(" ")
        events = [event([gt.Part(text="Let me think.", thought=True)])]
        events += [event([gt.Part(text=w if n == 0 else " " + w)]) for n, w in enumerate(words[:-1])]
        events.append(event([gt.Part(text=" " + words[-1])], finish, True))
        return events

    @staticmethod
    def _merged(events: list[gt.GenerateContentResponse]) -> gt.GenerateContentResponse:
        parts: list[gt.Part] = []
        for event in events:
            for candidate in event.candidates or ():
                parts.extend(candidate.content.parts if candidate.content and candidate.content.parts else [])
        last = events[-1].candidates[0]
        results = [c.logprobs_result for e in events for c in e.candidates or () if c.logprobs_result]
        merged_logprobs = gt.LogprobsResult(
            chosen_candidates=[c for r in results for c in r.chosen_candidates or ()],
            top_candidates=[c for r in results for c in r.top_candidates or ()] or None) if results else None
        merged = gt.Candidate(content=gt.Content(role="model", parts=parts) if parts else None, index=0,
                              finish_reason=last.finish_reason, safety_ratings=last.safety_ratings,
                              logprobs_result=merged_logprobs)
        return events[-1].model_copy(update={"candidates": [merged]})

    # Claude on Vertex ------------------------------------------------------------------------------
    async def _claude(self, request: web.Request, model: str, method: str) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        stream = method == "streamRawPredict"
        try:
            if method not in ("rawPredict", "streamRawPredict"):
                raise ValueError(f"unknown method {method}")
            if body.get("anthropic_version") != "vertex-2023-10-16" or "model" in body:
                raise ValueError("Vertex wants anthropic_version vertex-2023-10-16 and no model in the body")
            if bool(body.get("stream")) != stream:
                raise ValueError("stream must match the method")
            checked = {k: v for k, v in body.items() if k != "anthropic_version"} | {"model": model}
            _CLAUDE_REQUEST[stream].validate_python(checked)
        except Exception as exc:
            self.invalid.append(str(exc)[:300])
            return web.json_response({"type": "error", "error": {"type": "invalid_request_error",
                                                                  "message": str(exc)[:300]}}, status=400)
        content = body["messages"][-1]["content"]
        text = content if isinstance(content, str) else " ".join(b.get("text", "") for b in content)
        message = at.Message(id="msg_vertex_1", type="message", role="assistant", model=model,
                             content=[at.TextBlock(type="text", text=f"Claude says: {text}")],
                             stop_reason="end_turn", stop_sequence=None,
                             usage=at.Usage(input_tokens=9, output_tokens=4))
        if not stream:
            return web.Response(body=message.model_dump_json(exclude_none=True), content_type="application/json")
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        events: list[Any] = [
            at.RawMessageStartEvent(type="message_start", message=message.model_copy(update={
                "content": [], "stop_reason": None, "usage": at.Usage(input_tokens=9, output_tokens=1)})),
            at.RawContentBlockStartEvent(type="content_block_start", index=0,
                                         content_block=at.TextBlock(type="text", text="")),
            at.RawContentBlockDeltaEvent(type="content_block_delta", index=0,
                                         delta=at.TextDelta(type="text_delta", text=message.content[0].text)),
            at.RawContentBlockStopEvent(type="content_block_stop", index=0),
            at.RawMessageDeltaEvent(type="message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None},
                                    usage=at.MessageDeltaUsage(output_tokens=4)),
            at.RawMessageStopEvent(type="message_stop")]
        for event in events:
            await response.write(f"event: {event.type}\ndata: {event.model_dump_json(exclude_none=True)}\n\n"
                                 .encode())
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1beta/models/{tail}", self.gemini)
        app.router.add_post("/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{tail}",
                            self.vertex)
        app.router.add_post("/token", self.token)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self.gate.set()
        self.token_gate.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def fake(register_secret) -> AsyncIterator[FakeGoogle]:
    register_secret(API_KEY)
    server = FakeGoogle()
    await server.start()
    yield server
    await server.stop()
    for token in server.tokens:  # no access token may appear in any log line of the session
        register_secret(token)


@pytest.fixture
def events(receiver, monkeypatch):
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/global")
    monkeypatch.setenv("ACME_TOKEN", "global-token")
    return receiver


@pytest.fixture
def no_ambient_google(monkeypatch, tmp_path):
    """Application default credentials come only from what a test sets, never from this machine."""
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "VERTEXAI_CREDENTIALS", "VERTEXAI_PROJECT", "VERTEXAI_LOCATION",
                 "GOOGLE_CLOUD_PROJECT", "GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))


def gemini_model(fake: FakeGoogle, name: str = "gem", **extra: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {
        "model": f"gemini/{MODEL}", "api_base": fake.url, "api_key": API_KEY, "timeout": 10,
        "input_cost_per_token": 0.001, "output_cost_per_token": 0.002, **extra}}


def vertex_model(fake: FakeGoogle, credentials: Any, name: str = "vtx", model: str = MODEL,
                 **extra: Any) -> dict[str, Any]:
    params = {"model": f"vertex_ai/{model}", "api_base": fake.url, "vertex_location": LOCATION, "timeout": 10,
              "input_cost_per_token": 0.001, "output_cost_per_token": 0.002, **extra}
    if credentials is not None:
        params["vertex_credentials"] = credentials
    return {"model_name": name, "litellm_params": params}


def sdk(gw: Any, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gw.client.base_url).rstrip("/") + "/v1", api_key=key, max_retries=0,
                              timeout=20)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "additionalProperties": False,
                                                          "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


# Gemini ---------------------------------------------------------------------------------------------------
async def test_gemini_chat_translates_system_images_params_usage_and_logs_the_event(fake, events, make_config,
                                                                                    start) -> None:
    async with start(make_config(models=[gemini_model(fake, safety_settings=[
            {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}])],
            litellm={"callbacks": ["acme"]})) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="gem", messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}],
            temperature=0.3, top_p=0.9, max_tokens=64, stop=["END"], seed=7, user="user-7",
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {
                "type": "object", "properties": {"x": {"type": "integer"}}}}}, reasoning_effort="low")
        message = answer.choices[0].message
        assert message.content == "You said: what is this" and answer.choices[0].finish_reason == "stop"
        assert message.model_extra["reasoning_content"] == "Let me think."
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (11, 10, 21)
        assert answer.usage.prompt_tokens_details.cached_tokens == 4
        assert answer.usage.completion_tokens_details.reasoning_tokens == 3
        assert fake.invalid == []
        sent = fake.requests[-1]
        assert sent["path"] == f"/v1beta/models/{MODEL}:generateContent" and sent["query"] == {}
        body = sent["body"]
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert body["contents"][0]["parts"][1:] == [
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}}]
        assert body["generationConfig"] == {
            "temperature": 0.3, "topP": 0.9, "seed": 7, "maxOutputTokens": 64, "stopSequences": ["END"],
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True}}
        assert body["safetySettings"] == [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
        assert await events.wait_for_async(lambda: len(events.events("/dest/global")) >= 1)
        (event,) = events.events("/dest/global")
        assert event["custom_llm_provider"] == "gemini" and event["model"] == MODEL
        assert (event["prompt_tokens"], event["completion_tokens"], event["total_tokens"]) == (11, 10, 21)
        assert event["response_cost"] == pytest.approx(11 * 0.001 + 10 * 0.002)
        long = await client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "long"}])
        assert long.choices[0].finish_reason == "length"


async def test_gemini_tools_round_trip_gives_back_thought_signatures(fake, make_config, start) -> None:
    async with start(make_config(models=[gemini_model(fake)])) as gw:
        client = sdk(gw, await gw.new_key())
        messages: list[Any] = [{"role": "user", "content": "weather in Paris and Rome?"}]
        first = await client.chat.completions.create(
            model="gem", messages=messages, tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
        calls = choice.message.tool_calls
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
            ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]
        assert len({c.id for c in calls}) == 2
        sent = fake.requests[-1]["body"]
        assert sent["tools"] == [{"functionDeclarations": [{
            "name": "get_weather", "description": "Weather in a city",
            "parametersJsonSchema": TOOLS[0]["function"]["parameters"]}]}]
        assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
        messages.append(choice.message.model_dump(exclude_none=True))
        messages += [{"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp": 21}'},
                     {"role": "tool", "tool_call_id": calls[1].id, "content": "sunny"}]
        second = await client.chat.completions.create(model="gem", messages=messages, tools=TOOLS)
        assert second.choices[0].message.content == 'Got [{"temp": 21}, {"output": "sunny"}]'
        assert fake.invalid == []
        turns = fake.requests[-1]["body"]["contents"]
        assert [t["role"] for t in turns] == ["user", "model", "user"]  # both results in one turn
        assert turns[1]["parts"][1]["thoughtSignature"] == SIGNATURE
        assert [p["functionResponse"]["name"] for p in turns[2]["parts"]] == ["get_weather", "get_weather"]
        # negative control: without the signature the fake refuses the turn, as a thinking model does
        stripped = [*messages[:1], {**messages[1], "tool_calls": [
            {**c, "id": c["id"].split("__thought__")[0]} for c in messages[1]["tool_calls"]]}]
        stripped += [{**m, "tool_call_id": m["tool_call_id"].split("__thought__")[0]} for m in messages[2:]]
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="gem", messages=stripped, tools=TOOLS)
        assert "thought_signature" in refused.value.body["message"]


async def test_gemini_stream_with_usage_reasoning_and_tool_calls(fake, events, make_config, start) -> None:
    async with start(make_config(models=[gemini_model(fake)], litellm={"callbacks": ["acme"]})) as gw:
        client = sdk(gw, await gw.new_key())
        stream = await client.chat.completions.create(model="gem", stream=True,
                                                      stream_options={"include_usage": True},
                                                      messages=[{"role": "user", "content": "hello there friend"}])
        chunks = [chunk async for chunk in stream]
        assert fake.requests[-1]["path"].endswith(":streamGenerateContent")
        assert fake.requests[-1]["query"] == {"alt": "sse"}
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "You said: hello there friend"
        reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                            for c in chunks if c.choices)
        assert reasoning == "Let me think."
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        assert chunks[-1].choices == [] and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) \
            == (11, 10)
        tool_stream = await client.chat.completions.create(model="gem", stream=True, tools=TOOLS,
                                                           messages=[{"role": "user", "content": "weather?"}])
        calls: dict[int, dict[str, str]] = {}
        finish = []
        async for chunk in tool_stream:
            assert chunk.usage is None  # not asked for
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += call.id or ""
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
            finish += [c.finish_reason for c in chunk.choices if c.finish_reason]
        assert {i: (c["name"], json.loads(c["arguments"])) for i, c in calls.items()} == {
            0: ("get_weather", {"city": "Paris"}), 1: ("get_weather", {"city": "Rome"})}
        assert calls[0]["id"].endswith("__thought__" + SIGNATURE) and finish == ["tool_calls"]
        assert fake.invalid == []
        assert await events.wait_for_async(lambda: len(events.events("/dest/global")) >= 2)
        logged = sorted(events.events("/dest/global"), key=lambda e: e["startTime"])
        assert all(e["stream"] and e["custom_llm_provider"] == "gemini" and e["model"] == MODEL for e in logged)
        assert [(e["prompt_tokens"], e["completion_tokens"]) for e in logged] == [(11, 10), (11, 10)]
        assert logged[0]["response_cost"] == pytest.approx(11 * 0.001 + 10 * 0.002)


async def test_gemini_stream_chunks_reach_the_client_before_the_upstream_finishes(fake, make_config,
                                                                                  start) -> None:
    async with start(make_config(models=[gemini_model(fake)])) as gw:
        client = sdk(gw, await gw.new_key())
        stream = await client.chat.completions.create(model="gem", stream=True,
                                                      messages=[{"role": "user", "content": "slow"}])
        received: list[str] = []
        async for chunk in stream:
            delta = chunk.choices[0].delta if chunk.choices else None
            piece = (delta.model_extra or {}).get("reasoning_content") if delta else None
            if piece or (delta and delta.content):
                received.append(piece or delta.content)
                if len(received) == 1:
                    # the fake holds every later event until this gate opens: the first arrived unbuffered
                    assert not fake.gate.is_set()
                    fake.gate.set()
        assert received == ["Let me think.", "You", " said:", " slow"]


async def test_gemini_safety_blocks_and_upstream_errors_are_openai_shaped(fake, events, make_config,
                                                                          start) -> None:
    bad_key = gemini_model(fake, "gem-bad", api_key="AIza-wrong-key-0000")
    async with start(make_config(models=[gemini_model(fake), bad_key], litellm={"callbacks": ["acme"]})) as gw:
        client = sdk(gw, await gw.new_key())
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as blocked:
                await client.chat.completions.create(model="gem", stream=stream,
                                                     messages=[{"role": "user", "content": "blocked"}])
            error = blocked.value.body
            assert (error["code"], error["type"], error["param"]) == ("content_filter", "content_policy_violation",
                                                                      "messages")
            assert error["block_reason"] == "SAFETY" and "SAFETY" in error["message"]
            assert error["safety_ratings"][0]["category"] == "HARM_CATEGORY_DANGEROUS_CONTENT"
        unsafe = await client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "unsafe"}])
        assert unsafe.choices[0].finish_reason == "content_filter"
        assert unsafe.choices[0].message.content == "Here is how"
        unsafe_stream = await client.chat.completions.create(model="gem", stream=True,
                                                             messages=[{"role": "user", "content": "unsafe"}])
        assert [c.choices[0].finish_reason async for c in unsafe_stream if c.choices][-1] == "content_filter"
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "quota"}])
        assert limited.value.body["code"] == "RESOURCE_EXHAUSTED" and limited.value.body["type"] == "rate_limit_error"
        with pytest.raises(openai.BadRequestError) as denied:
            await client.chat.completions.create(model="gem-bad", messages=[{"role": "user", "content": "hi"}])
        assert "API key not valid" in denied.value.body["message"]
        assert "AIza-wrong-key-0000" not in json.dumps(denied.value.body)
        broken = await client.chat.completions.create(model="gem", stream=True,
                                                      messages=[{"role": "user", "content": "break"}])
        with pytest.raises(openai.APIError) as cut:
            async for _ in broken:
                pass
        assert "overloaded" in str(cut.value)
        # negative control: the same model answers a plain request
        ok = await client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].message.content == "You said: hi"
        assert await events.wait_for_async(lambda: len(events.events("/dest/global")) >= 8)
        logged = sorted(events.events("/dest/global"), key=lambda e: e["startTime"])
        assert [e["status"] for e in logged] == ["failure"] * 2 + ["success"] * 2 + ["failure"] * 3 + ["success"]
        assert logged[0]["response_cost"] == 0.0 and logged[-1]["response_cost"] > 0


async def test_gemini_unsupported_params_and_bad_input_are_4xx_naming_the_field(fake, make_config,
                                                                                start) -> None:
    dropping = gemini_model(fake, "gem-drop", drop_params=True)
    async with start(make_config(models=[gemini_model(fake), dropping])) as gw:
        client = sdk(gw, await gw.new_key())
        cases = [({"logit_bias": {"1": 5}}, "logit_bias"), ({"parallel_tool_calls": False}, "parallel_tool_calls"),
                 ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"), ({"top_logprobs": 3}, "top_logprobs"),
                 ({"reasoning_effort": "extreme"}, "reasoning_effort"), ({"max_tokens": 0}, "max_tokens"),
                 ({"response_format": {"type": "json_schema"}}, "response_format"),
                 ({"tool_choice": "sometimes"}, "tool_choice")]
        for extra, field in cases:
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "hi"}],
                                                     **extra)
            assert refused.value.body["param"] == field and field in refused.value.body["message"]
        for content in ([{"type": "image_url", "image_url": {"url": "https://example.com/image"}}],
                        [{"type": "input_audio", "input_audio": {"data": "AA==", "format": "midi"}}],
                        [{"type": "input_audio", "input_audio": {"data": "not base64!", "format": "wav"}}],
                        [{"type": "file", "file": {"file_id": "file-abc123"}}],
                        [{"type": "file", "file": {"file_data": "JVBERi0="}}],
                        [{"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}]):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(model="gem", messages=[{"role": "user", "content": content}])
            assert refused.value.body["param"] == "messages" and "messages[0].content[0]" in \
                refused.value.body["message"]
        with pytest.raises(openai.BadRequestError) as orphan:
            await client.chat.completions.create(model="gem", messages=[
                {"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "r"}])
        assert "messages[1].tool_call_id" in orphan.value.body["message"]
        assert fake.requests == []  # everything above was refused before any upstream call
        answer = await client.chat.completions.create(model="gem-drop", logit_bias={"1": 5}, parallel_tool_calls=False,
                                                      messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "You said: hi" and fake.invalid == []


async def test_gemini_logprobs_come_back_as_openai_logprobs(fake, make_config, start) -> None:
    async with start(make_config(models=[gemini_model(fake)])) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="gem", logprobs=True, top_logprobs=2,
                                                      messages=[{"role": "user", "content": "hi there"}])
        assert fake.invalid == []
        assert fake.requests[-1]["body"]["generationConfig"] == {"responseLogprobs": True, "logprobs": 2}
        content = answer.choices[0].logprobs.content
        assert [t.token for t in content] == ["You", " said:", " hi", " there"]  # the thought part has none
        assert all(t.logprob == -0.25 for t in content)
        assert content[1].bytes == list(b" said:")
        assert [(t.token, t.logprob) for t in content[2].top_logprobs] == [(" hi", -0.25), ("hi~1", -0.5)]
        assert answer.choices[0].message.content == "You said: hi there"
        # streamed: each chunk carries the logprobs of its own text
        stream = await client.chat.completions.create(model="gem", logprobs=True, stream=True,
                                                      messages=[{"role": "user", "content": "hi there"}])
        pieces = [(c.choices[0].delta.content, [t.token for t in c.choices[0].logprobs.content])
                  async for c in stream if c.choices and c.choices[0].logprobs]
        assert pieces == [("You", ["You"]), (" said:", [" said:"]), (" hi", [" hi"]), (" there", [" there"])]
        assert fake.requests[-1]["body"]["generationConfig"] == {"responseLogprobs": True}
        # negative control: not asked, none sent and none returned
        plain = await client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "hi"}])
        assert plain.choices[0].logprobs is None and "generationConfig" not in fake.requests[-1]["body"]


async def test_gemini_audio_and_file_parts_become_inline_data_and_file_data(fake, make_config, start) -> None:
    wav = base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt ").decode()
    pdf = base64.b64encode(b"%PDF-1.7\n%%EOF").decode()
    files_uri = "https://generativelanguage.googleapis.com/v1beta/files/abc-123"
    async with start(make_config(models=[gemini_model(fake)])) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="gem", messages=[{"role": "user", "content": [
            {"type": "text", "text": "listen"},
            {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
            {"type": "input_audio", "input_audio": {"data": wav, "format": "mp3"}},
            {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{pdf}", "filename": "a.pdf"}},
            {"type": "file", "file": {"file_data": pdf, "filename": "report.pdf"}},
            {"type": "file", "file": {"file_id": "gs://acme-bucket/docs/spec.pdf"}},
            {"type": "file", "file": {"file_id": files_uri, "format": "audio/ogg"}},
            {"type": "file", "file": {"file_id": files_uri}}]}])
        assert answer.choices[0].message.content == "You said: listen"
        assert fake.invalid == []
        assert fake.requests[-1]["body"]["contents"][0]["parts"][1:] == [
            {"inlineData": {"mimeType": "audio/wav", "data": wav}},
            {"inlineData": {"mimeType": "audio/mp3", "data": wav}},
            {"inlineData": {"mimeType": "application/pdf", "data": pdf}},
            {"inlineData": {"mimeType": "application/pdf", "data": pdf}},
            {"fileData": {"fileUri": "gs://acme-bucket/docs/spec.pdf", "mimeType": "application/pdf"}},
            {"fileData": {"fileUri": files_uri, "mimeType": "audio/ogg"}},
            {"fileData": {"fileUri": files_uri}}]


# Vertex AI ------------------------------------------------------------------------------------------------
async def test_vertex_gemini_signs_a_jwt_with_the_service_account_and_caches_the_token(
        fake, events, make_config, start, tmp_path, no_ambient_google) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(fake.service_account()))
    async with start(make_config(models=[vertex_model(fake, str(key_file))],
                                 litellm={"callbacks": ["acme"]})) as gw:
        client = sdk(gw, await gw.new_key())
        for _ in range(3):
            answer = await client.chat.completions.create(model="vtx", messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content == "You said: hi"
        stream = await client.chat.completions.create(model="vtx", stream=True,
                                                      messages=[{"role": "user", "content": "hi"}])
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "You said: hi"
        assert len(fake.token_requests) == 1  # one exchange for every request: the token is cached
        assert fake.invalid == []
        paths = [r["path"] for r in fake.requests]
        base = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{MODEL}"
        assert paths == [f"{base}:generateContent"] * 3 + [f"{base}:streamGenerateContent"]
        assert all(r["headers"]["Authorization"] in {f"Bearer {t}" for t in fake.tokens} for r in fake.requests)
        assert await events.wait_for_async(lambda: len(events.events("/dest/global")) >= 4)
        event = events.events("/dest/global")[0]
        assert (event["custom_llm_provider"], event["model"], event["api_base"]) == ("vertex_ai", MODEL, fake.url)
        assert (event["prompt_tokens"], event["completion_tokens"]) == (11, 10) and event["response_cost"] > 0
        # negative control: a key the token endpoint does not know is refused there, and the client hears 401
        stranger = fake.service_account(email="stranger@acme-proj-1.iam.gserviceaccount.com")
        stranger["private_key"] = fake.service_account(email="other@x.iam.gserviceaccount.com")["private_key"]
    async with start(make_config(models=[vertex_model(fake, json.dumps(stranger))])) as gw:
        client = sdk(gw, await gw.new_key())
        with pytest.raises(openai.AuthenticationError) as denied:
            await client.chat.completions.create(model="vtx", messages=[{"role": "user", "content": "hi"}])
        assert "invalid_grant" in denied.value.body["message"] and "PRIVATE KEY" not in denied.value.body["message"]
        assert len(fake.requests) == 4  # refused before reaching Vertex


async def test_vertex_token_is_refreshed_in_the_background_before_it_expires(fake, make_config, start,
                                                                             no_ambient_google) -> None:
    fake.expires_in = 2  # google-auth would treat this as already stale; ours refreshes at half the lifetime
    async with start(make_config(models=[vertex_model(fake, fake.service_account())])) as gw:
        client = sdk(gw, await gw.new_key())
        await asyncio.to_thread(wait_until, lambda: len(fake.token_requests) >= 3, timeout=10,
                                what="three token refreshes with no request in between")
        assert fake.requests == []
        answer = await client.chat.completions.create(model="vtx", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "You said: hi"  # the fake accepts only unexpired tokens


async def test_a_slow_token_endpoint_never_blocks_the_event_loop(fake, make_config, start,
                                                                 no_ambient_google) -> None:
    fake.token_gate.clear()  # the token endpoint hangs until the test opens it
    async with start(make_config(models=[vertex_model(fake, fake.service_account()), gemini_model(fake)])) as gw:
        client = sdk(gw, await gw.new_key())
        waiting = asyncio.ensure_future(client.chat.completions.create(
            model="vtx", messages=[{"role": "user", "content": "hi"}]))
        # while the Vertex request waits for its first token, the gateway keeps answering others
        for _ in range(3):
            other = await client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "yo"}])
            assert other.choices[0].message.content == "You said: yo"
        assert not waiting.done()
        fake.token_gate.set()
        answer = await asyncio.wait_for(waiting, 10)
        assert answer.choices[0].message.content == "You said: hi" and len(fake.token_requests) == 1


async def test_vertex_claude_uses_raw_predict_and_the_anthropic_translation(fake, events, make_config, start,
                                                                            tmp_path, monkeypatch,
                                                                            no_ambient_google) -> None:
    """Application default credentials (GOOGLE_APPLICATION_CREDENTIALS) and the project from VERTEXAI_PROJECT."""
    key_file = tmp_path / "adc.json"
    key_file.write_text(json.dumps(fake.service_account(project=None)))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("VERTEXAI_PROJECT", PROJECT)
    async with start(make_config(models=[vertex_model(fake, None, "claude", CLAUDE)],
                                 litellm={"callbacks": ["acme"]})) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="claude", max_tokens=100, messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}])
        assert answer.choices[0].message.content == "Claude says: hello"
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (9, 4)
        stream = await client.chat.completions.create(model="claude", stream=True,
                                                      messages=[{"role": "user", "content": "again"}])
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "Claude says: again"
        assert fake.invalid == []
        base = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/anthropic/models/{CLAUDE}"
        assert [r["path"] for r in fake.requests] == [f"{base}:rawPredict", f"{base}:streamRawPredict"]
        first = fake.requests[0]["body"]
        assert first["system"] == "Be brief." and first["max_tokens"] == 100 and "model" not in first
        assert "x-api-key" not in {k.lower() for k in fake.requests[0]["headers"]}
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="claude", frequency_penalty=1,
                                                 messages=[{"role": "user", "content": "hi"}])
        assert refused.value.body["param"] == "frequency_penalty" and "vertex_ai" in refused.value.body["message"]
        assert await events.wait_for_async(lambda: len(events.events("/dest/global")) >= 2)
        logged = sorted(events.events("/dest/global"), key=lambda e: e["startTime"])
        assert [(e["custom_llm_provider"], e["model"], e["prompt_tokens"]) for e in logged[:2]] == [
            ("vertex_ai", CLAUDE, 9), ("vertex_ai", CLAUDE, 9)]


def test_start_up_errors_name_the_yaml_path(tmp_path, monkeypatch, no_ambient_google) -> None:
    from sluicegate.config import ConfigError, parse_settings
    from sluicegate.plugins import get_plugin_manager
    from sluicegate.providers.models import build_deployments
    from sluicegate.providers.registry import ProviderRegistry

    registry = ProviderRegistry.from_plugin_manager(get_plugin_manager({"SLUICEGATE_LOAD_PLUGINS": ""}))
    fifo = tmp_path / "key.fifo"
    import os

    os.mkfifo(fifo)
    no_project = FakeGoogle().service_account(project=None)
    secret_key = no_project["private_key"]
    params = [{"model": "gemini/gemini-2.5-flash"},
              {"model": "vertex_ai/gemini-2.5-pro", "vertex_credentials": str(tmp_path / "missing.json")},
              {"model": "vertex_ai/gemini-2.5-pro", "vertex_credentials": '{"type": "service_account", '},
              {"model": "vertex_ai/gemini-2.5-pro", "vertex_credentials": str(fifo)},
              {"model": "vertex_ai/gemini-2.5-pro", "vertex_credentials": json.dumps(no_project)},
              {"model": "vertex_ai/gemini-2.5-pro", "vertex_credentials": {"type": "service_account",
                                                                            "private_key": "x"}},
              {"model": "vertex_ai/gemini-2.5-pro", "vertex_projet": "p"}]
    settings = parse_settings({"model_list": [{"model_name": f"m{i}", "litellm_params": p}
                                              for i, p in enumerate(params)]})
    with pytest.raises(ConfigError) as info:
        build_deployments(settings, registry, {})
    found = info.value.problems
    assert found[0] == "model_list[0].litellm_params.api_key: required for gemini (or set GOOGLE_API_KEY or " \
                       "GEMINI_API_KEY)"
    assert found[1].startswith("model_list[1].litellm_params.vertex_credentials: no readable key file")
    assert found[2].startswith("model_list[2].litellm_params.vertex_credentials: not valid JSON")
    assert found[3].startswith("model_list[3].litellm_params.vertex_credentials: not a regular file")
    assert found[4].startswith("model_list[4].litellm_params.vertex_project: required for vertex_ai (or set "
                               "VERTEXAI_PROJECT)")
    assert found[5].startswith("model_list[5].litellm_params.vertex_credentials: not usable google-auth credentials")
    assert found[6].startswith("model_list[6].litellm_params.vertex_projet: not a parameter of vertex_ai (did you "
                               "mean 'vertex_project'?)")
    assert not any(secret_key[40:80] in p or '"type"' in p for p in found)  # keys are never quoted
    # negative control: the environment LiteLLM reads completes every model
    good = {d.model_name: d for d in build_deployments(parse_settings({"model_list": [
        {"model_name": "a", "litellm_params": {"model": "gemini/gemini-2.5-flash"}},
        {"model_name": "b", "litellm_params": {"model": "vertex_ai/gemini-2.5-pro",
                                               "vertex_credentials": json.dumps(no_project)}}]}),
        registry, {"GEMINI_API_KEY": "AIza-env", "VERTEXAI_PROJECT": "p-env", "VERTEXAI_LOCATION": "global"})}
    assert good["a"].api_key == "AIza-env" and good["a"].api_base == "https://generativelanguage.googleapis.com"
    assert good["b"].api_base == "https://aiplatform.googleapis.com"
    assert good["b"].provider.url == ("https://aiplatform.googleapis.com/v1/projects/p-env/locations/global/"
                                      "publishers/google/models/gemini-2.5-pro:generateContent")


def test_fake_validation_refuses_what_the_real_api_would() -> None:
    """The negative control of every ``fake.invalid == []`` above: google-genai's types do catch bad requests."""
    good = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    validate_gemini_request(good)
    for bad in ({**good, "model": "x"}, {"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]},
                {"contents": [{"role": "user", "parts": [{"image_url": "x"}]}]},
                {"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png",
                                                                         "data": "not base64!"}}]}]},
                {**good, "generationConfig": {"maxTokens": 5}},
                {**good, "tools": [{"type": "function", "function": {"name": "f"}}]},
                {**good, "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}},
                {**good, "generationConfig": {"logprobs": 3}},
                {**good, "generationConfig": {"responseLogprobs": True, "logprobs": 21}},
                {"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "audio/midi", "data": "AA=="}}]}]},
                {"contents": [{"role": "user", "parts": [{"fileData": {"mimeType": "application/pdf"}}]}]}):
        with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError or our ValueError
            validate_gemini_request(bad)


def test_translation_cpu_per_request_is_small() -> None:
    """Measured, not asserted tightly: request and response translation of a typical chat (printed with -s)."""
    import msgspec

    from sluicegate.providers.gemini import GeminiProvider
    from sluicegate.providers.models import Deployment

    deployment = Deployment(model_name="g", custom_llm_provider="gemini", upstream_model=MODEL,
                            api_base="http://127.0.0.1:9", api_key=API_KEY)
    provider = GeminiProvider(deployment, GeminiProvider.Params())
    body = {"model": "g", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hello, how are you today?"}],
            "max_tokens": 256, "temperature": 0.5}
    fake = FakeGoogle()
    answer = _dump(fake._merged(fake._answer({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))).encode()
    rounds = 5000
    started = time.process_time()
    for _ in range(rounds):
        msgspec.json.encode(provider.translation.request(provider.accepted(body)))
        msgspec.json.encode(provider.translation.response(msgspec.json.decode(answer)))
    per_request_us = (time.process_time() - started) / rounds * 1e6
    print(f"gemini translation: {per_request_us:.1f} us CPU per request")
    assert per_request_us < 1000  # a sanity bound for a shared CI core; the measured figure is far below
