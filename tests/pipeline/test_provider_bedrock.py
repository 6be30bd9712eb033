"""The ``bedrock`` provider end to end: the official ``openai`` SDK → the gateway → a fake Bedrock on loopback.

No real Bedrock can run here, so the fake speaks its wire protocol and checks what a real one would:

- **Auth**: every request's SigV4 signature is recomputed with botocore's own ``SigV4Auth`` from the bytes that
  arrived (method, raw path, signed headers, body) and the known test credentials (the AWS SigV4 test suite's
  ``AKIDEXAMPLE`` pair, or the temporary ones the fake STS issued); scope (region, service ``bedrock``), date and
  session token are checked. A wrong key or a changed byte is a 403 ``InvalidSignatureException``.
- **Paths and encoding**: only ``POST /model/{modelId}/converse`` and ``/converse-stream`` (the model id
  percent-encoded in the path); the JSON body is checked member by member against botocore's service model for
  ``bedrock-runtime`` (unknown members, missing required ones, enums, unions with exactly one member, blobs as
  base64), then by botocore's ``ParamValidator`` (types, ranges, lengths).
- **Answers**: built as the service model's output shapes and validated by ``ParamValidator`` before they are
  sent; streams are ``application/vnd.amazon.eventstream`` messages (``:event-type``, ``:message-type``,
  ``:content-type`` headers, CRCs). botocore ships an event-stream decoder but no encoder, so the fake frames
  each message itself and, before sending it, decodes it with botocore's ``EventStreamBuffer`` and checks it
  comes back identical.
- **STS**: a fake STS answers ``AssumeRole`` (query protocol, XML) after the same SigV4 check (service ``sts``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hmac
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import openai
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer
from botocore.session import get_session
from botocore.validate import ParamValidator

from sluicegate.testing.waiting import wait_until_async

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

REGION = "us-west-2"
ACCESS_KEY = "AKIDEXAMPLE"  # the AWS SigV4 test suite's credentials
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
MODEL_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"
ROLE_ARN = "arn:aws:iam::123456789012:role/bedrock-caller"
BEDROCK_API_KEY = "ABSKQmVkcm9ja0FQSUtleS10ZXN0LWtleQ=="  # a Bedrock API key's shape (Bearer auth, no SigV4)

_SERVICE = get_session().get_service_model("bedrock-runtime")
_CONVERSE = _SERVICE.operation_model("Converse")
_CONVERSE_STREAM = _SERVICE.operation_model("ConverseStream")
_EVENTS = _SERVICE.shape_for("ConverseStreamOutput")


# -- the service model as a validator of wire JSON ---------------------------------------------------------
def from_wire(shape: Any, value: Any, path: str = "$") -> Any:
    """Wire JSON → botocore parameters (blobs decoded), refusing what the service model does not allow."""
    kind = shape.type_name
    if kind == "structure" and getattr(shape, "is_document_type", False):
        return value
    if kind == "structure":
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object for {shape.name}")
        unknown = set(value) - set(shape.members)
        if unknown:
            raise ValueError(f"{path}: unknown members {sorted(unknown)} of {shape.name}")
        missing = [m for m in shape.required_members if m not in value]
        if missing:
            raise ValueError(f"{path}: missing required {missing} of {shape.name}")
        if shape.is_tagged_union and len(value) != 1:
            raise ValueError(f"{path}: the union {shape.name} takes exactly one member, got {sorted(value)}")
        return {k: from_wire(shape.members[k], v, f"{path}.{k}") for k, v in value.items()}
    if kind == "list":
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list")
        return [from_wire(shape.member, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a map")
        return {k: from_wire(shape.value, v, f"{path}.{k}") for k, v in value.items()}
    if kind == "blob":
        return base64.b64decode(value, validate=True)
    if kind == "string" and shape.enum and value not in shape.enum:
        raise ValueError(f"{path}: {value!r} is not one of {shape.enum}")
    return value


def validate(shape: Any, params: Any) -> None:
    report = ParamValidator().validate(params, shape)
    if report.has_errors():
        raise ValueError(report.generate_report())


def validate_request(operation: Any, model_id: str, body: dict[str, Any]) -> None:
    if "modelId" in body:
        raise ValueError("modelId belongs in the path, not the body")
    params = from_wire(operation.input_shape, {"modelId": model_id, **body})
    validate(operation.input_shape, params)
    tool_blocks = any("toolUse" in b or "toolResult" in b for m in body["messages"] for b in m["content"])
    if tool_blocks and "toolConfig" not in body:  # Bedrock's own rule, beyond the shapes
        raise ValueError("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
    for tool in (body.get("toolConfig") or {}).get("tools") or ():  # Bedrock's rule for a tool's input schema
        if "toolSpec" in tool and tool["toolSpec"]["inputSchema"]["json"].get("type") != "object":
            raise ValueError("The value at toolConfig.tools.0.toolSpec.inputSchema.json.type must be one of the "
                             "following: object.")
    # Claude's rules for additionalModelRequestFields.thinking (a document: the service model does not type it),
    # as Anthropic's Messages API states them
    extra = body.get("additionalModelRequestFields") or {}
    if set(extra) - {"thinking"}:
        raise ValueError(f"additionalModelRequestFields: unknown fields {sorted(set(extra) - {'thinking'})}")
    thinking = extra.get("thinking")
    if thinking is not None:
        if thinking.get("type") == "enabled":
            budget = thinking.get("budget_tokens")
            if set(thinking) != {"type", "budget_tokens"} or not isinstance(budget, int) or budget < 1024:
                raise ValueError("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
            if (body.get("inferenceConfig") or {}).get("maxTokens", 0) <= budget:
                raise ValueError("`max_tokens` must be greater than `thinking.budget_tokens`")
            if "tool" in ((body.get("toolConfig") or {}).get("toolChoice") or {}):
                raise ValueError("Thinking may not be enabled when tool_choice forces tool use.")
        elif thinking != {"type": "disabled"}:
            raise ValueError("thinking: expected {type: enabled, budget_tokens} or {type: disabled}")


def to_wire(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    return value


# -- SigV4, verified with botocore's signer --------------------------------------------------------------------
def verify_sigv4(request: web.Request, body: bytes, service: str, known: dict[str, tuple[str, str | None]]) -> str:
    """Recompute the request's signature with botocore; return the access key id, or raise naming the fault."""
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        raise PermissionError("MissingAuthenticationTokenException")
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    key_id, date, region, scope_service, terminator = fields["Credential"].split("/")
    if key_id not in known:
        raise PermissionError("UnrecognizedClientException")
    if (region, scope_service, terminator) != (REGION, service, "aws4_request"):
        raise PermissionError("InvalidSignatureException")
    stamp = request.headers.get("X-Amz-Date", "")
    when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    if stamp[:8] != date or abs(time.time() - when.timestamp()) > 300:
        raise PermissionError("InvalidSignatureException")
    secret, token = known[key_id]
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        raise PermissionError("InvalidSignatureException")
    if token is not None and (request.headers.get("X-Amz-Security-Token") != token
                              or "x-amz-security-token" not in signed):
        raise PermissionError("UnrecognizedClientException")
    aws_request = AWSRequest(method=request.method, url=f"http://{request.host}{request.raw_path}", data=body,
                             headers={name: request.headers[name] for name in signed if name in request.headers})
    aws_request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(key_id, secret, token), service, REGION)
    expected = signer.signature(signer.string_to_sign(aws_request, signer.canonical_request(aws_request)),
                                aws_request)
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise PermissionError("InvalidSignatureException")
    return key_id


# -- event stream framing, checked by botocore's decoder -------------------------------------------------------
def frame(headers: dict[str, str], payload: bytes) -> bytes:
    encoded = b"".join(struct.pack(">B", len(k)) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode()))
                       + v.encode() for k, v in headers.items())
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    message += struct.pack(">I", zlib.crc32(message) & 0xFFFFFFFF)
    buffer = EventStreamBuffer()
    buffer.add_data(message)
    (decoded,) = list(buffer)
    assert decoded.headers == headers and decoded.payload == payload, "botocore decodes another message"
    return message


def event_frame(kind: str, event: dict[str, Any]) -> bytes:
    validate(_EVENTS.members[kind], event)
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                 json.dumps(to_wire(event)).encode())


def exception_frame(kind: str, message: str) -> bytes:
    member = kind[:1].lower() + kind[1:]
    assert member in _EVENTS.members, kind
    return frame({":exception-type": member, ":content-type": "application/json", ":message-type": "exception"},
                 json.dumps({"message": message}).encode())


def last_text(body: dict[str, Any]) -> str:
    return " ".join(b["text"] for b in body["messages"][-1]["content"] if "text" in b)


class FakeBedrock:
    """Bedrock Runtime's Converse routes and STS's AssumeRole on loopback. The last user turn picks the behaviour."""

    def __init__(self) -> None:
        self.known: dict[str, tuple[str, str | None]] = {ACCESS_KEY: (SECRET_KEY, None)}
        self.requests: list[dict[str, Any]] = []
        self.invalid: list[str] = []
        self.sts_calls: list[dict[str, Any]] = []
        self.sts_lifetime = 3600.0
        self.gate = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def _error(self, status: int, kind: str, message: str) -> web.Response:
        return web.json_response({"message": message}, status=status,
                                 headers={"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/"})

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        text = last_text(body)
        content: list[dict[str, Any]]
        has_result = any("toolResult" in b for b in body["messages"][-1]["content"])
        json_tool = next((t["toolSpec"] for t in (body.get("toolConfig") or {}).get("tools", ())
                          if t["toolSpec"]["name"] == "json_tool_call"), None)
        if json_tool is not None and not has_result:
            # the forced tool: an input that fits the schema it was given (each property's type)
            properties = json_tool["inputSchema"]["json"].get("properties") or {"answer": {"type": "string"}}
            sample = {"string": "Paris", "integer": 21, "number": 21.5, "boolean": True, "array": [], "object": {}}
            content = [{"toolUse": {"toolUseId": "tooluse_json", "name": "json_tool_call",
                                    "input": {k: sample.get(v.get("type"), "x") for k, v in properties.items()}}}]
            stop = "tool_use"
        elif body.get("toolConfig") and not has_result:
            content = [{"text": "Let me check."},
                       {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}},
                       {"toolUse": {"toolUseId": "tooluse_2", "name": "get_weather", "input": {"city": "Rome"}}}]
            stop = "tool_use"
        else:
            content, stop = [{"reasoningContent": {"reasoningText": {"text": "thinking it over",
                                                                     "signature": "sig"}}},
                             {"text": f"You said: {text}"}], "end_turn"
        if text == "long":
            stop = "max_tokens"
        if text == "guarded":
            stop = "guardrail_intervened"
        answer = {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop,
                  "usage": {"inputTokens": 11, "outputTokens": 7, "totalTokens": 26, "cacheReadInputTokens": 5,
                            "cacheWriteInputTokens": 3},
                  "metrics": {"latencyMs": 12}}
        validate(_CONVERSE.output_shape, answer)
        return answer

    async def converse(self, request: web.Request) -> web.StreamResponse:
        streaming = request.path.endswith("/converse-stream")
        raw = await request.read()
        body = json.loads(raw)
        model_id = request.match_info["model_id"]
        self.requests.append({"raw_path": request.raw_path, "headers": dict(request.headers), "body": body,
                              "model_id": model_id, "stream": streaming})
        try:
            if request.headers.get("Authorization", "").startswith("Bearer "):
                if request.headers["Authorization"] != f"Bearer {BEDROCK_API_KEY}":
                    raise PermissionError("UnrecognizedClientException")
                key_id = "api-key"
            else:
                key_id = verify_sigv4(request, raw, "bedrock", self.known)
        except PermissionError as exc:
            return self._error(403, str(exc), "The request signature we calculated does not match the signature "
                                              "you provided.")
        self.requests[-1]["key_id"] = key_id
        try:
            validate_request(_CONVERSE_STREAM if streaming else _CONVERSE, model_id, body)
        except ValueError as exc:
            self.invalid.append(str(exc))
            return self._error(400, "ValidationException", str(exc)[:500])
        if model_id != MODEL_ID:
            return self._error(404, "ResourceNotFoundException", "Could not resolve the foundation model")
        text = last_text(body)
        if text == "throttle":
            return self._error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
        if text == "denied":
            return self._error(403, "AccessDeniedException", "You don't have access to the model.")
        answer = self._answer(body)
        if not streaming:
            return web.json_response(to_wire(answer))
        return await self._stream(request, body, answer)

    async def _stream(self, request: web.Request, body: dict[str, Any], answer: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/vnd.amazon.eventstream",
                                               "x-amzn-RequestId": "req-1"})
        await response.prepare(request)
        text = last_text(body)
        await response.write(event_frame("messageStart", {"role": "assistant"}))
        for index, block in enumerate(answer["output"]["message"]["content"]):
            if "text" in block:
                words = block["text"].split(" ")
                for n, word in enumerate(words):
                    await response.write(event_frame("contentBlockDelta", {
                        "contentBlockIndex": index, "delta": {"text": word if n == 0 else " " + word}}))
                    if text == "slow" and n == 0:
                        await self.gate.wait()
                    if text == "break" and n == 1:
                        await response.write(exception_frame("ThrottlingException", "Throttled mid-stream"))
                        return response
            elif "reasoningContent" in block:
                await response.write(event_frame("contentBlockDelta", {
                    "contentBlockIndex": index,
                    "delta": {"reasoningContent": {"text": block["reasoningContent"]["reasoningText"]["text"]}}}))
            else:
                use = block["toolUse"]
                await response.write(event_frame("contentBlockStart", {"contentBlockIndex": index, "start": {
                    "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}))
                arguments = json.dumps(use["input"])
                for piece in (arguments[:5], arguments[5:]):
                    await response.write(event_frame("contentBlockDelta", {
                        "contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}))
            await response.write(event_frame("contentBlockStop", {"contentBlockIndex": index}))
        await response.write(event_frame("messageStop", {"stopReason": answer["stopReason"]}))
        await response.write(event_frame("metadata", {"usage": answer["usage"], "metrics": {"latencyMs": 12}}))
        return response

    async def sts(self, request: web.Request) -> web.Response:
        raw = await request.read()
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        self.sts_calls.append(form)
        try:
            verify_sigv4(request, raw, "sts", {ACCESS_KEY: (SECRET_KEY, None)})
        except PermissionError as exc:
            return web.Response(status=403, text=f"<ErrorResponse><Error><Code>{exc}</Code></Error></ErrorResponse>")
        if form.get("Action") != "AssumeRole" or form.get("RoleArn") != ROLE_ARN or not form.get("RoleSessionName"):
            return web.Response(status=400, text="<ErrorResponse><Error><Code>ValidationError</Code></Error>"
                                                 "</ErrorResponse>")
        n = len(self.sts_calls)
        key_id, secret, token = f"ASIATEMP{n:08d}", f"temp-secret-{n}-" + "x" * 20, f"temp-token-{n}-" + "y" * 20
        self.known[key_id] = (secret, token)
        expiry = datetime.datetime.fromtimestamp(time.time() + self.sts_lifetime, datetime.timezone.utc)
        return web.Response(content_type="text/xml", text=(
            '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
            f"<Credentials><AccessKeyId>{key_id}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>"
            f"<SessionToken>{token}</SessionToken><Expiration>{expiry.strftime('%Y-%m-%dT%H:%M:%SZ')}</Expiration>"
            f"</Credentials><AssumedRoleUser><AssumedRoleId>AROA123:{form['RoleSessionName']}</AssumedRoleId>"
            f"<Arn>{ROLE_ARN}/{form['RoleSessionName']}</Arn></AssumedRoleUser></AssumeRoleResult>"
            "<ResponseMetadata><RequestId>sts-1</RequestId></ResponseMetadata></AssumeRoleResponse>"))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/model/{model_id}/converse", self.converse)
        app.router.add_post("/model/{model_id}/converse-stream", self.converse)
        app.router.add_post("/sts/", self.sts)
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
async def fake() -> AsyncIterator[FakeBedrock]:
    server = FakeBedrock()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def events(receiver, monkeypatch):
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/global")
    monkeypatch.setenv("ACME_TOKEN", "global-token")
    return receiver


def models(fake: FakeBedrock, name: str = "nova", **extra: Any) -> list[dict[str, Any]]:
    return [{"model_name": name, "litellm_params": {
        "model": f"bedrock/{MODEL_ID}", "aws_bedrock_runtime_endpoint": fake.url, "aws_region_name": REGION,
        "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY, "timeout": 10,
        "input_cost_per_token": 0.001, "output_cost_per_token": 0.002, "cache_read_input_token_cost": 0.001,
        "cache_creation_input_token_cost": 0.001, **extra}}]  # every price set: the table's cache prices stay out


def sdk(gw: Any, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gw.client.base_url).rstrip("/") + "/v1", api_key=key, max_retries=0,
                              timeout=20)


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


async def test_converse_signed_with_images_usage_and_the_event(fake, events, register_secret, make_config,
                                                                start) -> None:
    register_secret(SECRET_KEY)
    async with start(make_config(models=models(fake), litellm={"callbacks": ["acme"]})) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="nova", messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "what is this"},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}],
            max_tokens=50, temperature=0.2, top_p=0.9, stop=["END"])
        assert fake.invalid == [] and fake.requests[-1]["key_id"] == ACCESS_KEY
        message = answer.choices[0].message
        assert message.content == "You said: what is this" and answer.choices[0].finish_reason == "stop"
        assert message.model_extra["reasoning_content"] == "thinking it over"
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (19, 7, 26)
        assert answer.usage.prompt_tokens_details.cached_tokens == 5
        assert answer.usage.model_extra["cache_creation_input_tokens"] == 3
        seen = fake.requests[-1]
        assert seen["raw_path"] == f"/model/{MODEL_ID.replace(':', '%3A')}/converse" and seen["model_id"] == MODEL_ID
        assert seen["body"]["system"] == [{"text": "Be brief."}]
        assert seen["body"]["inferenceConfig"] == {"maxTokens": 50, "temperature": 0.2, "topP": 0.9,
                                                   "stopSequences": ["END"]}
        assert seen["body"]["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": PNG}}}
        assert await events.wait_for_async(lambda: len(events.events("/dest/global")) >= 1)
        (event,) = events.events("/dest/global")
        assert event["custom_llm_provider"] == "bedrock" and event["model"] == MODEL_ID
        assert (event["prompt_tokens"], event["completion_tokens"]) == (19, 7)
        assert event["response_cost"] == pytest.approx(19 * 0.001 + 7 * 0.002)
        assert SECRET_KEY not in json.dumps(event)


async def test_a_wrong_secret_fails_the_signature_check(fake, make_config, start) -> None:
    """Negative control of the SigV4 check: the same request signed with another secret is refused."""
    wrong = models(fake, "wrong", aws_secret_access_key="not-the-secret-key-0000")
    async with start(make_config(models=[*models(fake), *wrong])) as gw:
        client = sdk(gw, await gw.new_key())
        with pytest.raises(openai.AuthenticationError) as denied:
            await client.chat.completions.create(model="wrong", messages=[{"role": "user", "content": "hi"}])
        assert denied.value.status_code == 401 and denied.value.body["code"] == "InvalidSignatureException"
        ok = await client.chat.completions.create(model="nova", messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].message.content == "You said: hi"


async def test_tools_round_trip_and_finish_reasons(fake, make_config, start) -> None:
    async with start(make_config(models=models(fake))) as gw:
        client = sdk(gw, await gw.new_key())
        messages: list[Any] = [{"role": "user", "content": "weather in Paris and Rome?"}]
        first = await client.chat.completions.create(model="nova", messages=messages, tools=TOOLS,
                                                     tool_choice={"type": "function",
                                                                  "function": {"name": "get_weather"}})
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls
        assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
            ("tooluse_1", "get_weather", {"city": "Paris"}), ("tooluse_2", "get_weather", {"city": "Rome"})]
        tool_config = fake.requests[-1]["body"]["toolConfig"]
        assert tool_config["toolChoice"] == {"tool": {"name": "get_weather"}}
        assert tool_config["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"] == {"city": {"type": "string"}}
        messages.append(choice.message.model_dump(exclude_none=True))
        messages += [{"role": "tool", "tool_call_id": c.id, "content": f"sunny in {c.id}"} for c in calls]
        second = await client.chat.completions.create(model="nova", messages=messages, tools=TOOLS)
        assert second.choices[0].message.content.startswith("You said")
        turns = fake.requests[-1]["body"]["messages"]
        assert [t["role"] for t in turns] == ["user", "assistant", "user"]
        assert [next(iter(b)) for b in turns[1]["content"]] == ["text", "toolUse", "toolUse"]
        assert [b["toolResult"]["toolUseId"] for b in turns[2]["content"]] == ["tooluse_1", "tooluse_2"]
        long = await client.chat.completions.create(model="nova", messages=[{"role": "user", "content": "long"}])
        guarded = await client.chat.completions.create(model="nova", messages=[{"role": "user", "content": "guarded"}])
        assert (long.choices[0].finish_reason, guarded.choices[0].finish_reason) == ("length", "content_filter")
        assert fake.invalid == []


async def test_stream_with_usage_tool_deltas_and_reasoning(fake, events, make_config, start) -> None:
    async with start(make_config(models=models(fake), litellm={"callbacks": ["acme"]})) as gw:
        client = sdk(gw, await gw.new_key())
        stream = await client.chat.completions.create(model="nova", stream=True,
                                                      stream_options={"include_usage": True},
                                                      messages=[{"role": "user", "content": "hello there friend"}])
        chunks = [chunk async for chunk in stream]
        assert fake.requests[-1]["raw_path"].endswith("/converse-stream")
        assert fake.requests[-1]["headers"]["Accept"] == "application/vnd.amazon.eventstream"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                            for c in chunks if c.choices)
        assert text == "You said: hello there friend" and reasoning == "thinking it over"
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        assert chunks[-1].choices == [] and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
            19, 7)
        tool_stream = await client.chat.completions.create(model="nova", stream=True, tools=TOOLS,
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
            0: ("tooluse_1", "get_weather", {"city": "Paris"}), 1: ("tooluse_2", "get_weather", {"city": "Rome"})}
        assert fake.invalid == []
        assert await events.wait_for_async(lambda: len(events.events("/dest/global")) >= 2)
        logged = sorted(events.events("/dest/global"), key=lambda e: e["startTime"])
        assert all(e["stream"] and e["custom_llm_provider"] == "bedrock" for e in logged)
        assert [(e["prompt_tokens"], e["completion_tokens"]) for e in logged] == [(19, 7), (19, 7)]


async def test_stream_chunks_reach_the_client_before_the_upstream_finishes(fake, make_config, start) -> None:
    async with start(make_config(models=models(fake))) as gw:
        client = sdk(gw, await gw.new_key())
        stream = await client.chat.completions.create(model="nova", stream=True,
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


async def test_errors_are_mapped_before_and_during_a_stream(fake, events, make_config, start) -> None:
    async with start(make_config(models=models(fake), litellm={"callbacks": ["acme"]})) as gw:
        client = sdk(gw, await gw.new_key())
        with pytest.raises(openai.RateLimitError) as throttled:
            await client.chat.completions.create(model="nova", messages=[{"role": "user", "content": "throttle"}])
        assert throttled.value.body["code"] == "ThrottlingException" and "wait" in throttled.value.body["message"]
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.chat.completions.create(model="nova", stream=True,
                                                 messages=[{"role": "user", "content": "denied"}])
        assert denied.value.body["code"] == "AccessDeniedException"
        stream = await client.chat.completions.create(model="nova", stream=True,
                                                      messages=[{"role": "user", "content": "break"}])
        with pytest.raises(openai.APIError) as broken:
            async for _ in stream:
                pass
        assert "Throttled mid-stream" in str(broken.value)
        # a request the service model refuses comes back as Bedrock's ValidationException → 400
        with pytest.raises(openai.BadRequestError) as invalid:
            await client.chat.completions.create(model="nova", max_tokens=0,
                                                 messages=[{"role": "user", "content": "hi"}])
        assert invalid.value.body["code"] == "ValidationException" and "maxTokens" in invalid.value.body["message"]
        fake.invalid.clear()
        ok = await client.chat.completions.create(model="nova", messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].message.content == "You said: hi"  # negative control: the same model answers
        assert await events.wait_for_async(lambda: len(events.events("/dest/global")) >= 5)
        logged = sorted(events.events("/dest/global"), key=lambda e: e["startTime"])
        assert [e["status"] for e in logged] == ["failure"] * 4 + ["success"]


async def test_bad_input_is_a_400_naming_the_field_before_any_upstream_call(fake, make_config, start) -> None:
    async with start(make_config(models=models(fake))) as gw:
        client = sdk(gw, await gw.new_key())
        cases = [({"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}, "messages"),
                 ({"messages": [{"role": "user", "content": [
                     {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]}, "messages"),
                 ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
                 ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
                 ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
                 ({"messages": [{"role": "user", "content": "hi"}], "stop": [1, 2]}, "stop"),
                 ({"messages": [{"role": "user", "content": "hi"}], "tools": {"a": 1}}, "tools"),
                 ({"messages": "hi"}, "messages"),
                 ({"messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 1}, "frequency_penalty")]
        for body, field in cases:
            response = await gw.client.post("/v1/chat/completions", json={"model": "nova", **body},
                                            headers={"Authorization": f"Bearer {client.api_key}"})
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"]["param"] == field, (body, response.json())
        assert fake.requests == []


async def test_assume_role_credentials_are_fetched_and_refreshed_off_the_request_path(fake, register_secret,
                                                                                      make_config, start) -> None:
    register_secret(SECRET_KEY)
    # STS hands out credentials that enter botocore's 15-minute refresh window two seconds after they are issued
    fake.sts_lifetime = 15 * 60 + 2
    role = models(fake, "role", aws_role_name=ROLE_ARN, aws_session_name="gw-test",
                  aws_sts_endpoint=f"{fake.url}/sts/")
    async with start(make_config(models=role)) as gw:
        assert len(fake.sts_calls) == 1  # resolved when the gateway started
        assert fake.sts_calls[0]["RoleSessionName"] == "gw-test"
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="role", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "You said: hi"
        first = fake.requests[-1]
        assert first["key_id"] == "ASIATEMP00000001"
        assert first["headers"]["X-Amz-Security-Token"].startswith("temp-token-1-")
        # the background refresh, not a request, calls STS again
        await wait_until_async(lambda: len(fake.sts_calls) >= 2, timeout=15,
                               what="the credentials refreshed before expiry")
        calls_before = len(fake.sts_calls)
        await client.chat.completions.create(model="role", messages=[{"role": "user", "content": "hi"}])
        assert fake.requests[-1]["key_id"] == "ASIATEMP00000002"
        assert len(fake.sts_calls) == calls_before  # the request itself did not wait for STS


async def test_configuration_errors_at_start_up(fake, make_config, start) -> None:
    from sluicegate.config import ConfigError

    bad = [{"model_name": "a", "litellm_params": {"model": f"bedrock/{MODEL_ID}"}},
           {"model_name": "b", "litellm_params": {"model": f"bedrock/{MODEL_ID}", "aws_region_name": REGION,
                                                  "aws_access_key_id": ACCESS_KEY}},
           {"model_name": "c", "litellm_params": {"model": f"bedrock/{MODEL_ID}", "aws_region_name": REGION,
                                                  "aws_regoin_name": REGION}}]
    with pytest.raises(ConfigError) as refused:
        async with start(make_config(models=bad)):
            pass
    text = str(refused.value)
    assert "model_list[0].litellm_params.aws_region_name: required for bedrock" in text
    assert "model_list[1].litellm_params.aws_secret_access_key" in text
    assert "model_list[2].litellm_params.aws_regoin_name: not a parameter of bedrock (did you mean " \
           "'aws_region_name'?)" in text


def test_fake_validation_refuses_what_the_real_api_would() -> None:
    """The negative control of every ``fake.invalid == []``: the service model does catch bad requests."""
    good = {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"maxTokens": 5}}
    validate_request(_CONVERSE, MODEL_ID, good)
    for bad in ({**good, "temperature": 1}, {**good, "inferenceConfig": {"maxTokens": 0}},
                {**good, "messages": [{"role": "tool", "content": [{"text": "x"}]}]},
                {**good, "messages": [{"role": "user", "content": [{"text": "x", "image": {}}]}]},
                {**good, "messages": [{"role": "user", "content": [{"image": {
                    "format": "tiff", "source": {"bytes": PNG}}}]}]},
                {**good, "toolConfig": {"tools": [{"toolSpec": {"name": "f"}}]}},
                {**good, "modelId": MODEL_ID}):
        with pytest.raises(ValueError):
            validate_request(_CONVERSE, MODEL_ID, bad)


async def test_translation_and_signing_cpu_per_request() -> None:
    """Measured, not asserted tightly: translation both ways plus the SigV4 signature (printed with -s)."""
    from sluicegate.providers.aws_auth import sign_headers
    from sluicegate.providers.bedrock import BedrockProvider
    from sluicegate.providers.models import Deployment

    deployment = Deployment(model_name="n", custom_llm_provider="bedrock", upstream_model=MODEL_ID,
                            api_base="http://127.0.0.1:9", api_key=None)
    provider = BedrockProvider(deployment, BedrockProvider.Params(aws_region_name=REGION))
    body = {"model": "n", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hello, how are you today?"}], "max_tokens": 256}
    raw_answer = json.dumps(FakeBedrock()._answer({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}))
    import msgspec

    credentials = Credentials(ACCESS_KEY, SECRET_KEY).get_frozen_credentials()
    rounds = 2000
    started = time.process_time()
    for _ in range(rounds):
        msgspec.json.encode(provider.translate_request(provider.accepted(body)))
        msgspec.json.encode(provider.translate_response(msgspec.json.decode(raw_answer)))
    translate_us = (time.process_time() - started) / rounds * 1e6
    payload = msgspec.json.encode(provider.translate_request(body))
    started = time.process_time()
    for _ in range(rounds):
        sign_headers(credentials, "bedrock", REGION, provider.url, payload, {"Content-Type": "application/json"})
    sign_us = (time.process_time() - started) / rounds * 1e6
    print(f"bedrock translation: {translate_us:.1f} us CPU per request; SigV4 signing: {sign_us:.1f} us")
    assert translate_us < 1000 and sign_us < 5000  # sanity bounds for a shared core; the figures are far below


async def test_api_key_history_without_tools_and_unavailable_credentials(fake, make_config, start) -> None:
    register = [{"model_name": "keyed", "litellm_params": {
                    "model": f"bedrock/converse/{MODEL_ID}", "api_base": fake.url, "aws_region_name": REGION,
                    "api_key": BEDROCK_API_KEY}},
                {"model_name": "no-creds", "litellm_params": {
                    "model": f"bedrock/{MODEL_ID}", "aws_bedrock_runtime_endpoint": fake.url,
                    "aws_region_name": REGION, "aws_profile_name": "no-such-profile-here"}}]
    async with start(make_config(models=register)) as gw:
        client = sdk(gw, await gw.new_key())
        # a Bedrock API key goes as Bearer; bedrock/converse/<id> is the same model id
        history = [{"role": "user", "content": "weather?"},
                   {"role": "assistant", "content": None, "tool_calls": [
                       {"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                   {"role": "tool", "tool_call_id": "tooluse_1", "content": "sunny"}]
        answer = await client.chat.completions.create(model="keyed", messages=history)  # no tools in this request
        assert answer.choices[0].message.content.startswith("You said")
        seen = fake.requests[-1]
        assert seen["key_id"] == "api-key" and seen["model_id"] == MODEL_ID and fake.invalid == []
        assert seen["body"]["toolConfig"]["tools"][0]["toolSpec"]["name"] == "dummy_tool"
        # credentials that cannot be resolved: start-up goes on, the model answers 503 saying why
        requests_before = len(fake.requests)
        with pytest.raises(openai.APIStatusError) as unavailable:
            await client.chat.completions.create(model="no-creds", messages=[{"role": "user", "content": "hi"}])
        assert unavailable.value.status_code == 503
        assert unavailable.value.body["code"] == "credentials_unavailable"
        assert "ProfileNotFound" in unavailable.value.body["message"]
        assert len(fake.requests) == requests_before  # nothing unsigned went upstream


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "temperature": {"type": "integer"}},
          "required": ["city", "temperature"], "additionalProperties": False}


async def test_thinking_and_reasoning_effort_go_as_additional_model_request_fields(fake, make_config,
                                                                                   start) -> None:
    nova = models(fake, "other-model", model="bedrock/amazon.nova-pro-v1:0")
    async with start(make_config(models=[*models(fake), *nova])) as gw:
        client = sdk(gw, await gw.new_key())
        answer = await client.chat.completions.create(model="nova", reasoning_effort="medium",
                                                      messages=[{"role": "user", "content": "think"}])
        body = fake.requests[-1]["body"]
        assert body["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 2048}}
        assert body["inferenceConfig"]["maxTokens"] == 4096 + 2048  # room for the budget, as LiteLLM leaves
        assert answer.choices[0].message.model_extra["reasoning_content"] == "thinking it over"
        await client.chat.completions.create(model="nova", max_tokens=3000, messages=[
            {"role": "user", "content": "think"}], extra_body={"thinking": {"type": "enabled", "budget_tokens": 1500}})
        body = fake.requests[-1]["body"]
        assert body["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 1500}}
        assert body["inferenceConfig"] == {"maxTokens": 3000}
        await client.chat.completions.create(model="nova", messages=[{"role": "user", "content": "plain"}])
        assert "additionalModelRequestFields" not in fake.requests[-1]["body"]  # negative control
        assert fake.invalid == []
        sent = len(fake.requests)
        for extra, field in (({"reasoning_effort": "extreme"}, "reasoning_effort"),
                             ({"thinking": {"type": "enabled", "budget_tokens": 10}}, "thinking"),
                             ({"thinking": "yes"}, "thinking")):
            response = await gw.client.post("/v1/chat/completions", json={
                "model": "nova", "messages": [{"role": "user", "content": "hi"}], **extra},
                headers={"Authorization": f"Bearer {client.api_key}"})
            assert response.status_code == 400 and response.json()["error"]["param"] == field, response.text
        # a model that is not Claude: refused naming the field, not sent
        response = await gw.client.post("/v1/chat/completions", json={
            "model": "other-model", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "low"},
            headers={"Authorization": f"Bearer {client.api_key}"})
        assert response.status_code == 400 and response.json()["error"]["param"] == "reasoning_effort"
        assert len(fake.requests) == sent


async def test_response_format_goes_as_a_forced_tool_and_comes_back_as_content(fake, make_config, start) -> None:
    async with start(make_config(models=models(fake))) as gw:
        client = sdk(gw, await gw.new_key())
        response_format = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA,
                                                                  "description": "The weather"}}
        answer = await client.chat.completions.create(model="nova", response_format=response_format,
                                                      messages=[{"role": "user", "content": "weather in Paris"}])
        choice = answer.choices[0]
        assert json.loads(choice.message.content) == {"city": "Paris", "temperature": 21}
        assert choice.message.tool_calls is None and choice.finish_reason == "stop"
        config = fake.requests[-1]["body"]["toolConfig"]
        assert config["tools"] == [{"toolSpec": {"name": "json_tool_call", "description": "The weather",
                                                 "inputSchema": {"json": SCHEMA}}}]
        assert config["toolChoice"] == {"tool": {"name": "json_tool_call"}}
        # streamed: the forced tool's input arrives as content deltas
        stream = await client.chat.completions.create(model="nova", response_format=response_format, stream=True,
                                                      messages=[{"role": "user", "content": "weather in Paris"}])
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert json.loads(text) == {"city": "Paris", "temperature": 21}
        assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        # json_object, with the client's own tools beside it; with thinking the tool is offered, not forced
        await client.chat.completions.create(model="nova", response_format={"type": "json_object"}, tools=TOOLS,
                                             reasoning_effort="low",
                                             messages=[{"role": "user", "content": "weather in Paris"}])
        config = fake.requests[-1]["body"]["toolConfig"]
        assert [t["toolSpec"]["name"] for t in config["tools"]] == ["get_weather", "json_tool_call"]
        assert config["tools"][1]["toolSpec"]["inputSchema"]["json"]["additionalProperties"] is True
        assert "toolChoice" not in config
        # negative control: without response_format, a tool call stays a tool call
        plain = await client.chat.completions.create(model="nova", tools=TOOLS,
                                                     messages=[{"role": "user", "content": "weather?"}])
        assert plain.choices[0].finish_reason == "tool_calls" and plain.choices[0].message.tool_calls
        assert fake.invalid == []
        # a schema whose root is a $ref into $defs (as pydantic's RootModel writes it): the root resolved
        rooted = {"$ref": "#/$defs/Weather", "$defs": {"Weather": SCHEMA}}
        answer = await client.chat.completions.create(
            model="nova", messages=[{"role": "user", "content": "weather in Paris"}],
            response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": rooted}})
        assert json.loads(answer.choices[0].message.content) == {"city": "Paris", "temperature": 21}
        sent = fake.requests[-1]["body"]["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]
        assert sent == {**SCHEMA, "$defs": rooted["$defs"]} and fake.invalid == []
        for schema in (None, {"type": "array", "items": {"type": "string"}}):
            response = await gw.client.post("/v1/chat/completions", json={
                "model": "nova", "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}},
                headers={"Authorization": f"Bearer {client.api_key}"})
            assert response.status_code == 400 and response.json()["error"]["param"] == "response_format"


def test_fake_validation_refuses_what_claude_refuses_in_thinking() -> None:
    """Negative control of the fake's thinking rules."""
    good = {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"maxTokens": 5000},
            "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 1024}}}
    validate_request(_CONVERSE, MODEL_ID, good)
    forced = {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}],
              "toolChoice": {"tool": {"name": "f"}}}
    for bad in ({**good, "inferenceConfig": {"maxTokens": 1000}},
                {**good, "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 100}}},
                {**good, "additionalModelRequestFields": {"reasoning_effort": "low"}},
                {**good, "toolConfig": forced},
                {**good, "additionalModelRequestFields": {}, "toolConfig": {"tools": [{"toolSpec": {
                    "name": "f", "inputSchema": {"json": {"$ref": "#/$defs/A", "$defs": {"A": {"type": "object"}}}}}}]}}):
        with pytest.raises(ValueError):
            validate_request(_CONVERSE, MODEL_ID, bad)
