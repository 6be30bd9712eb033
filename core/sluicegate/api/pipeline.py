"""The call pipeline every model endpoint shares: request id, auth, attribution, model restrictions, router,
one log event per call.

An endpoint module describes itself as an :class:`Endpoint` (how to read and check its body, how to ask a
deployment, what of the answer enters the log event) and :func:`run_call` does the rest for every model endpoint,
chat included: streamed or not, with the response cache where the endpoint is cacheable.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from sluicegate.api.common import decode_json, gateway_of
from sluicegate.attribution import NO_ATTRIBUTION, Attribution, owner_metadata, request_attribution
from sluicegate.errors import ApiError
from sluicegate.events import LogEvent, LogMetadata
from sluicegate.limits.ratelimit import estimate_tokens
from sluicegate.providers.base import forward_traceparent
from sluicegate.providers.openai_compatible import upstream_body
from sluicegate.providers.upstream import UpstreamError
from sluicegate.router import RequestOptions, RouterFailure

if TYPE_CHECKING:
    from sluicegate.auth import AuthContext
    from sluicegate.cache import CachedAnswer, CacheLookup
    from sluicegate.gateway import Gateway
    from sluicegate.limits.ratelimit import Ticket
    from sluicegate.providers.models import Deployment
    from sluicegate.router import Attempt

__all__ = ("Assembler", "Call", "Endpoint", "MockSource", "SSEAssembler", "allowed_models", "binary_placeholder",
           "error_response", "may_use", "parse_model_body", "random_id", "request_id_of", "request_options",
           "run_call", "take_attribution")

_decoder = msgspec.json.Decoder()
_rng = random.Random()  # seeded from os.urandom once

MODEL_PARAMS_SKIP = frozenset({"model", "messages", "input", "prompt", "stream", "stream_options", "user", "metadata",
                               "tools", "functions", "cache", "response_format", "instructions", "file"})
"""Body fields that are not model parameters: the input (logged as ``messages``, redacted with it), routing and
bookkeeping."""


class Call:
    """Facts of one request, gathered for its log event."""

    __slots__ = ("answer", "attempts", "attribution", "body", "call_type", "ctx", "deployment", "event_id", "input",
                 "input_field", "ip", "metadata", "params_skip", "raw", "request_id", "start", "state", "ticket",
                 "traceparent", "upload", "user_agent")

    def __init__(self, ctx: AuthContext, deployment: Deployment | None, body: dict[str, Any], request: Request,
                 request_id: str, *, call_type: str = "acompletion", input_field: str = "messages",
                 attribution: Attribution = NO_ATTRIBUTION, metadata: dict[str, Any] | None = None,
                 params_skip: frozenset[str] = MODEL_PARAMS_SKIP) -> None:
        self.ctx = ctx
        self.deployment = deployment
        self.body = body
        self.raw: bytes | None = None
        self.request_id = request_id
        self.event_id = random_id()
        self.start = time.time()
        self.ip = request.client.host if request.client else None
        self.user_agent = request.headers.get("user-agent")
        self.traceparent = request.headers.get("traceparent")
        forward_traceparent(self.traceparent)  # the upstream calls carry the client's trace context
        self.attempts: list[Attempt] | None = None
        self.call_type = call_type
        self.input_field = input_field
        self.attribution = attribution
        self.metadata = metadata
        self.input: Any = None
        """What the event logs as ``messages`` when it is not ``body[input_field]`` (an upload's placeholder)."""
        self.upload: Any = None
        """A multipart upload's parts, kept out of ``body`` (which the event logs)."""
        self.ticket: Ticket | None = None  # the rate limits' hold, settled with the call's one event
        self.params_skip = params_skip
        self.state: Any = None
        """The endpoint's own facts of this request (:meth:`Endpoint.state`)."""
        self.answer: Any = None
        """The JSON answer as the endpoint built it (a translated one) when it returns that answer's bytes: the
        pipeline logs it as it is rather than decoding the bytes again. None: the bytes are decoded."""

    def limit_headers(self) -> dict[str, str]:
        """The rate limits' remaining/limit headers for a successful answer (none when nothing limits the key)."""
        return self.ticket.headers() if self.ticket is not None else {}

    def upstream_body(self, deployment: Deployment) -> tuple[dict[str, Any], bytes | None]:
        """The body for ``deployment``: the request's ``metadata`` goes back in only for an upstream that stores
        it (``store: true`` on a provider with ``takes_metadata``)."""
        if self.metadata is not None and self.body.get("store") is True and deployment.provider.takes_metadata:
            return {**self.body, "metadata": self.metadata}, None
        return self.body, self.raw

    def event(self, *, status: str, response: Any = None, usage: dict[str, Any] | None = None,
              error: ApiError | None = None, error_str: str | None = None, response_id: str | None = None,
              first_token_at: float | None = None, stream: bool = False) -> LogEvent:
        end = time.time()
        usage = usage or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        total = int(usage.get("total_tokens") or prompt + completion)
        if self.ticket is not None:  # every call ends in exactly one event: its tokens count and its slots free
            if not total and status == "success" and self.ticket.counts_tokens:
                total = estimate_tokens(self.body.get(self.input_field), response)
            self.ticket.finish(total)
        deployment = self.deployment
        key = self.ctx.key
        team = self.ctx.team
        error_information = None
        if error is not None:
            error_information = {"error_class": type(error).__name__, "status_code": error.status,
                                 "error_code": str(error.code), "error_type": error.type}
        who = self.attribution
        key_meta, team_meta, owner_tags = owner_metadata(self.ctx)
        tags = who.request_tags
        if owner_tags:
            tags = [*tags, *(t for t in owner_tags if t not in tags)]
        spend_logs = who.spend_logs_metadata
        key_spend = key_meta.get("spend_logs_metadata") if key_meta else None
        if isinstance(key_spend, dict):
            spend_logs = {**key_spend, **(spend_logs or {})}
        return LogEvent(
            # One fresh id per request (LiteLLM's litellm_call_id), never the upstream's response id nor the
            # client's x-request-id: sinks deduplicate on it, so it must not repeat across requests.
            id=self.event_id,
            trace_id=self.request_id,
            call_type=self.call_type,
            stream=stream,
            status=status,  # type: ignore[arg-type]
            model=deployment.upstream_model if deployment else str(self.body.get("model", "")),
            model_id=deployment.model_id if deployment else None,
            model_group=deployment.model_name if deployment else str(self.body.get("model", "")),
            api_base=deployment.api_base if deployment else None,
            custom_llm_provider=deployment.custom_llm_provider if deployment else None,
            prompt_tokens=prompt, completion_tokens=completion,
            total_tokens=int(usage.get("total_tokens") or prompt + completion),
            response_cost=deployment.cost(usage, self.start) if deployment and status == "success" else 0.0,
            startTime=self.start, endTime=end, completionStartTime=first_token_at or (end if response else None),
            response_time=end - self.start,
            messages=self.body.get(self.input_field) if self.input is None else self.input, response=response,
            error_str=error_str or (error.message if error else None), error_information=error_information,
            model_parameters={k: v for k, v in self.body.items() if k not in self.params_skip},
            metadata=LogMetadata(
                user_api_key_hash=self.ctx.token_id if key else None,
                user_api_key_alias=key.key_alias if key else None,
                user_api_key_team_id=key.team_id if key else None,
                user_api_key_team_alias=team.team_alias if team else None,
                user_api_key_user_id=key.user_id if key else None,
                requester_ip_address=self.ip, user_agent=self.user_agent, request_id=self.request_id,
                traceparent=self.traceparent,
                user_api_key_metadata=key_meta, user_api_key_team_metadata=team_meta,
                user_api_key_end_user_id=who.end_user, spend_logs_metadata=spend_logs,
                requester_metadata=who.requester_metadata, session_id=who.session_id,
                existing_trace_id=who.existing_trace_id, trace_name=who.trace_name,
                generation_name=who.generation_name, generation_id=who.generation_id,
                trace_user_id=who.trace_user_id, trace_metadata=who.trace_metadata),
            attempts=[a.as_dict() for a in self.attempts] if self.attempts is not None else None,
            request_tags=tags, end_user=who.end_user,
        )


def request_id_of(request: Request) -> str:
    given = request.headers.get("x-request-id")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return random_id()


def random_id() -> str:
    """128 random bits as 32 hex digits. Ids, not secrets: the PRNG avoids a getrandom syscall per request
    (os.urandom showed as 5 % of the loop in bench/)."""
    return f"{_rng.getrandbits(128):032x}"


def may_use(ctx: AuthContext, model: str) -> bool:
    """Key and team ``models`` restrictions apply to the name the client used (an alias is its own name)."""
    if ctx.key is not None and ctx.key.models and model not in ctx.key.models:
        return False
    team_models = getattr(ctx.team, "models", None) if ctx.team is not None else None
    return not team_models or model in team_models


def allowed_models(gateway: Gateway, ctx: AuthContext) -> list[str]:
    return [n for n in gateway.router.listed() if may_use(ctx, n)]


_MAX_REQUEST_RETRIES = 10


def request_options(gateway: Gateway, ctx: AuthContext, body: dict[str, Any]) -> RequestOptions | None:
    """LiteLLM's per-request router fields, taken out of the body (never sent upstream); None when absent."""
    if "num_retries" not in body and "fallbacks" not in body:
        return None
    num_retries = body.pop("num_retries", None)
    fallbacks = body.pop("fallbacks", None)
    if num_retries is not None and (not isinstance(num_retries, int) or isinstance(num_retries, bool)
                                    or not 0 <= num_retries <= _MAX_REQUEST_RETRIES):
        raise ApiError(400, f"num_retries: expected an integer from 0 to {_MAX_REQUEST_RETRIES}", param="num_retries")
    if fallbacks is not None:
        if not isinstance(fallbacks, list) or not all(isinstance(f, str) and f for f in fallbacks):
            raise ApiError(400, "fallbacks: expected an array of model names", param="fallbacks")
        for name in fallbacks:
            if gateway.router.resolve(name) is None:
                raise ApiError(400, f"fallbacks: model {name!r} is not configured", param="fallbacks",
                               code="model_not_found")
            if not may_use(ctx, name):
                raise ApiError(403, f"fallbacks: this key may not use model {name!r}", type="permission_error",
                               param="fallbacks", code="403")
    return RequestOptions(num_retries=num_retries, fallbacks=fallbacks)


def error_response(exc: ApiError, request_id: str) -> Response[bytes]:
    headers = {"x-request-id": request_id}
    if exc.headers:
        headers.update(exc.headers)
    return Response(content=exc.body(), status_code=exc.status, media_type="application/json", headers=headers)


def parse_model_body(raw: bytes) -> tuple[dict[str, Any], str]:
    """A JSON object with a ``model`` string (400 naming the field otherwise)."""
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", param="body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: required (a string naming a configured model)", param="model")
    return body, model


def take_attribution(body: dict[str, Any], request: Request) -> tuple[Attribution, dict[str, Any] | None]:
    """The request's attribution, with ``metadata`` taken out of ``body`` (it never goes upstream as it came)."""
    metadata = body.pop("metadata", None)
    return request_attribution(metadata, body.get("user"), request.headers), metadata



def binary_placeholder(kind: str, size: int) -> str:
    """What an event holds instead of binary data (audio, image bytes, base64 images), whatever the redaction
    setting: its type and size, never the bytes."""
    return f"<{kind}: {size} bytes, not logged>"


class Assembler:
    """Collects a streamed answer as it is relayed, for the log event. The base counts bytes (a binary stream);
    endpoints that stream SSE subclass it."""

    __slots__ = ("bytes", "done", "error", "first_token_at", "response_id")

    def __init__(self) -> None:
        self.bytes = 0
        self.first_token_at: float | None = None
        self.done = True
        """Whether the answer ended as its protocol says a complete one does (an SSE stream's last event)."""
        self.error: str | None = None
        self.response_id: str | None = None

    def feed(self, data: bytes) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.time()
        self.bytes += len(data)

    def result(self) -> tuple[Any, dict[str, Any] | None]:
        """The answer as the event logs it, and its usage (OpenAI's names: ``prompt_tokens``, ...)."""
        return None, None


class SSEAssembler(Assembler):
    """An SSE stream's JSON events, one :meth:`event` call each (``[DONE]`` sets ``done``)."""

    __slots__ = ("_buffer", "_name")

    def __init__(self) -> None:
        super().__init__()
        self.done = False
        self._buffer = b""
        self._name: str | None = None

    def feed(self, data: bytes) -> None:
        super().feed(data)
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            line = line.strip()
            if line.startswith(b"event:"):
                self._name = line[6:].strip().decode("utf-8", "replace")
                continue
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            name, self._name = self._name, None
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                value = _decoder.decode(payload)
            except msgspec.DecodeError:
                continue
            if isinstance(value, dict):
                error = value.get("error") if name in (None, "error") else None
                if error is not None and name != "response.failed":
                    self.error = str(error.get("message") if isinstance(error, dict) else error)
                    continue
                self.event(name, value)

    def event(self, name: str | None, data: dict[str, Any]) -> None:
        """One decoded event (``name`` from its ``event:`` line, None without one)."""


class MockSource:
    """A ``mock_response`` model's streamed answer (an async iterator of bytes) as the pipeline relays a stream."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: Any) -> None:
        self._chunks = chunks

    def aiter_raw(self) -> Any:
        return self._chunks

    async def aclose(self) -> None:
        await self._chunks.aclose()


class Endpoint:
    """One model endpoint as the pipeline sees it. Subclasses set the class attributes and override what
    differs; everything else (auth, attribution, model restrictions, router, cache, log event) is the pipeline's.

    - ``name``: the upstream endpoint (``completions``), in errors as ``/v1/<name>``.
    - ``call_type``: LiteLLM's name for the event (``atext_completion``).
    - ``input_field``: the body field logged as the event's ``messages`` (redacted with them).
    - ``cacheable``: answers go through the response cache (``cache`` body controls accepted); with
      ``cache_streams`` streamed requests too (:meth:`replay`, :meth:`store_stream`).
    - ``incomplete``: the event's error when a stream ends before its protocol's last event.
    - ``params_skip``: body fields that are not the event's ``model_parameters``.
    """

    name: str = ""
    call_type: str = ""
    input_field: str = "input"
    cacheable: bool = False
    cache_streams: bool = False
    incomplete: str = "upstream stream ended before its last event"
    params_skip: frozenset[str] = MODEL_PARAMS_SKIP

    def state(self, request: Request) -> Any:
        """This endpoint's own facts of a request, read once it is authenticated (400 :class:`ApiError` naming
        a header that is wrong); kept as ``call.state``."""
        return None

    def attribution(self, body: dict[str, Any], request: Request) -> tuple[Attribution, dict[str, Any] | None]:
        """The request's attribution, and its ``metadata`` when it was taken out of ``body``."""
        return take_attribution(body, request)

    def error_response(self, exc: ApiError, request_id: str) -> Response[bytes]:
        """An error as this endpoint's clients expect it (OpenAI's shape)."""
        return error_response(exc, request_id)

    def headers(self, request_id: str) -> dict[str, str]:
        """The headers every answer of this endpoint carries."""
        return {"x-request-id": request_id}

    async def read(self, request: Request) -> tuple[dict[str, Any], bytes | None, Any]:
        """The body as a dict (with ``model``), its raw bytes when they may go upstream as they came, and an
        upload kept out of the body: ``(parts, what the event logs as messages)``, or None."""
        raw = await request.body()
        body, _ = parse_model_body(raw or b"")
        return body, raw, None

    def check(self, body: dict[str, Any]) -> None:
        """Raise a 400 :class:`ApiError` naming the field that is wrong."""

    def streaming(self, body: dict[str, Any]) -> bool:
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "stream: expected a boolean", param="stream")
        return stream

    def tokens(self, router: Any, body: dict[str, Any]) -> int:
        """The prompt's tokens as usage-based routing estimates them before the answer (``router.estimate_tokens``)."""
        return 0

    async def answer(self, call: Call, deployment: Deployment) -> bytes:
        """A non-streamed answer's bytes (JSON unless :meth:`media_type` says otherwise)."""
        if deployment.mock_response is not None:
            raise self.unsupported_mock(deployment)
        body, raw = call.upstream_body(deployment)
        return await deployment.provider.forward(self.name, upstream_body(body, raw, deployment.upstream_model),
                                                 call.request_id)

    async def open(self, call: Call, deployment: Deployment) -> Any:
        """A streamed answer, once the upstream accepted: ``aiter_raw()``, ``aclose()`` and ``headers``."""
        if deployment.mock_response is not None:
            raise self.unsupported_mock(deployment)
        body, raw = call.upstream_body(deployment)
        return await deployment.provider.forward(self.name, upstream_body(body, raw, deployment.upstream_model),
                                                 call.request_id, stream=True)

    def media_type(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        return "application/json"

    def logged(self, call: Call, parsed: Any) -> tuple[Any, dict[str, Any] | None]:
        """What of a non-streamed answer enters the event, and its usage in OpenAI's names (for tokens and cost)."""
        usage = parsed.get("usage") if isinstance(parsed, dict) else None
        return parsed, usage if isinstance(usage, dict) else None

    def logged_input(self, body: dict[str, Any]) -> Any:
        """What the event logs as ``messages`` when it is more than ``body[input_field]``; None: that field."""
        return None

    def assembler(self, call: Call, headers: dict[str, str] | None) -> Assembler:
        """Collects a streamed answer for the event (``headers``: the upstream's answer's)."""
        return Assembler()

    def unsupported_mock(self, deployment: Deployment) -> ApiError:
        return ApiError(400, f"model {deployment.model_name!r} answers from mock_response, which serves chat, "
                             f"completions, responses and embeddings, not /v1/{self.name}", param="model",
                        code="unsupported_endpoint")

    def error_frame(self, error: ApiError) -> bytes | None:
        """The frame that ends a stream the upstream broke off (an OpenAI error frame), or None (binary)."""
        return b"data: " + error.body() + b"\n\n"

    def cached(self, parsed: Any) -> bool:
        """Whether an answer may be stored in the response cache."""
        return isinstance(parsed, dict)

    def replay(self, cached: CachedAnswer, body: dict[str, Any], stream: bool) -> tuple[bytes, str]:
        """A cached answer as the client asked for it: its bytes and media type."""
        return cached.content, "application/json"

    async def store_stream(self, lookup: CacheLookup, state: Assembler, body: dict[str, Any]) -> None:
        """Store a streamed answer that ended well (only with ``cache_streams``)."""


async def run_call(request: Request, endpoint: Endpoint) -> Response[Any]:
    """One call of ``endpoint``: read and check the body (400 naming a field), authenticate, check the model,
    take the attribution out of the body, look in the cache, route (retries, fallbacks), answer streamed or not,
    and log one event of the endpoint's ``call_type``."""
    gateway = gateway_of(request)
    rid = request_id_of(request)
    cache_controls = None
    try:
        ctx = await gateway.authenticate(request)
        state = endpoint.state(request)
        body, raw, upload = await endpoint.read(request)
        model = body["model"]
        endpoint.check(body)
        stream = endpoint.streaming(body)
        if endpoint.cacheable and "cache" in body:
            from sluicegate.cache import parse_controls

            cache_controls = body.pop("cache")  # LiteLLM's per-request cache controls; never sent upstream
            parse_controls(cache_controls)
            raw = None
        attribution, metadata = endpoint.attribution(body, request)
        if metadata is not None:
            raw = None  # the body changed: re-encode it for the upstream
    except ApiError as exc:
        return endpoint.error_response(exc, rid)
    group = gateway.router.resolve(model)
    call = Call(ctx, group.deployments[0] if group else None, body, request, rid, call_type=endpoint.call_type,
                input_field=endpoint.input_field, attribution=attribution, metadata=metadata,
                params_skip=endpoint.params_skip)
    call.raw = raw
    call.state = state
    if upload is not None:
        call.upload, call.input = upload
    else:
        call.input = endpoint.logged_input(body)
    lookup: CacheLookup | None = None
    try:
        if group is None:
            raise ApiError(400, f"model {model!r} is not configured; available: "
                                f"{', '.join(allowed_models(gateway, ctx))}", param="model", code="model_not_found")
        if not may_use(ctx, model):
            raise ApiError(403, f"this key may not use model {model!r}", type="permission_error",
                           param="model", code="403")
        options = request_options(gateway, ctx, body)
        if options is not None:
            call.raw = None
        await gateway.router.ready(group)
        # -- response cache (sluicegate.cache): look up before the upstream call; nothing at all when off
        if endpoint.cacheable and (not stream or endpoint.cache_streams) and gateway.cache.enabled_for(ctx):
            lookup = gateway.cache.lookup(ctx, group.deployments[0], body, cache_controls, kind=endpoint.name)
            cached = await lookup.get()
            if cached is not None:  # logged like any request (free, cache_hit), marked by a header
                response, usage = endpoint.logged(call, cached.parsed)
                event = call.event(status="success", response=response, usage=usage, stream=stream)
                lookup.mark(event, hit=True)
                gateway.record(event, ctx)
                content, media_type = endpoint.replay(cached, body, stream)
                headers = {**endpoint.headers(rid), **lookup.headers(hit=True)}
                if stream:
                    headers["cache-control"] = "no-cache"
                return Response(content=content, media_type=media_type, headers=headers)
        # -- end response cache
        await gateway.spend.check(ctx, await gateway.spend.end_user(attribution.end_user))  # budgets
        call.ticket = await gateway.limits.check(ctx, model)  # rate limits: settled with the call's event
        if stream:
            return await _stream(gateway, call, group, options, endpoint, lookup)
        try:
            outcome = await gateway.router.call(group, lambda d: endpoint.answer(call, d), options=options,
                                                tokens=endpoint.tokens(gateway.router, body))
        except RouterFailure as failure:
            call.deployment = failure.deployment or call.deployment
            call.attempts = failure.attempts
            raise failure.error from None
        call.deployment = outcome.deployment
        call.attempts = outcome.attempts
        content = outcome.result
        media_type = endpoint.media_type(body)
        if call.answer is not None:
            parsed = call.answer
        elif media_type == "application/json":
            try:
                parsed = _decoder.decode(content)
            except msgspec.DecodeError:
                raise UpstreamError(502, "upstream returned a body that is not JSON", type="upstream_error",
                                    code="502") from None
        else:
            parsed = content.decode("utf-8", "replace")
        response, usage = endpoint.logged(call, parsed)
    except ApiError as exc:
        gateway.record(call.event(status="failure", error=exc, stream=stream), ctx)
        return endpoint.error_response(exc, rid)
    outcome.finish(int((usage or {}).get("total_tokens") or 0))
    event = call.event(status="success", response=response, usage=usage)
    headers = {**endpoint.headers(rid), **call.limit_headers()}
    if lookup is not None:  # -- response cache: store the answer, mark the event and the response
        lookup.mark(event, hit=False)
        headers.update(lookup.headers(hit=False))
        if endpoint.cached(parsed):
            await lookup.put(content, parsed)
    gateway.record(event, ctx)
    return Response(content=content, media_type=media_type, headers=headers)


async def _stream(gateway: Gateway, call: Call, group: Any, options: RequestOptions | None,
                  endpoint: Endpoint, lookup: CacheLookup | None) -> Response[Any]:
    """Relay a streamed answer as it arrives; the event is built when it ends (or breaks off). Only the opening
    is retried: once the upstream accepted, its bytes go to the client as they come."""
    try:
        outcome = await gateway.router.call(group, lambda d: endpoint.open(call, d), options=options, stream=True,
                                            tokens=endpoint.tokens(gateway.router, call.body))
    except RouterFailure as failure:
        call.deployment = failure.deployment or call.deployment
        call.attempts = failure.attempts
        raise failure.error from None
    call.deployment = outcome.deployment
    call.attempts = outcome.attempts
    source = outcome.result
    headers_in = getattr(source, "headers", None)
    state = endpoint.assembler(call, headers_in)

    async def relay() -> AsyncIterator[bytes]:
        error: str | None = None
        try:
            async for data in source.aiter_raw():
                state.feed(data)
                yield data
            if state.error is not None:
                error = state.error
            elif not state.done:
                error = endpoint.incomplete
        except Exception as exc:
            if isinstance(exc, BaseExceptionGroup):
                error = "client disconnected mid-stream"
                raise
            # the upstream broke after bytes reached the client: not retried (two answers would be spliced)
            if isinstance(exc, ApiError):  # the source's own words (a translating source's protocol error)
                error, broken = exc.message, exc
            else:
                error = f"stream interrupted: {type(exc).__name__}"
                broken = UpstreamError(502, f"upstream {error}", type="upstream_error", code="502")
            frame = endpoint.error_frame(broken)
            if frame is not None:
                yield frame
        except BaseException:  # client gone (cancelled/closed)
            error = "client disconnected mid-stream"
            raise
        finally:
            await source.aclose()
            response, usage = state.result()
            if usage is None:  # a translating provider knows the usage even when the client did not ask for it
                usage = getattr(source, "usage", None)
            outcome.finish(int((usage or {}).get("total_tokens") or 0) if isinstance(usage, dict) else 0)
            event = call.event(status="failure" if error else "success", response=response,
                               usage=usage if isinstance(usage, dict) else None, error_str=error,
                               first_token_at=state.first_token_at, stream=call.body.get("stream") is True)
            if lookup is not None and error is None:  # -- response cache: store the assembled answer
                lookup.mark(event, hit=False)
                await endpoint.store_stream(lookup, state, call.body)
            gateway.record(event, call.ctx)

    headers = {**endpoint.headers(call.request_id), "cache-control": "no-cache", **call.limit_headers()}
    if lookup is not None:
        headers.update(lookup.headers(hit=False))
    return Stream(relay(), media_type=endpoint.media_type(call.body, headers_in),
                  headers=headers)
