"""The call pipeline every model endpoint shares: request id, auth, attribution, model restrictions, router,
one log event per call.

An endpoint module parses its body and shapes its answer; :func:`run_call` does the rest for a non-streaming
JSON call (chat keeps its own flow for streaming and the response cache, built from the same pieces).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response

from sluicegate.api.common import decode_json, gateway_of
from sluicegate.attribution import NO_ATTRIBUTION, Attribution, owner_metadata, request_attribution
from sluicegate.errors import ApiError
from sluicegate.events import LogEvent, LogMetadata
from sluicegate.limits.ratelimit import estimate_tokens
from sluicegate.providers.upstream import UpstreamError
from sluicegate.router import RequestOptions, RouterFailure

if TYPE_CHECKING:
    from sluicegate.auth import AuthContext
    from sluicegate.gateway import Gateway
    from sluicegate.limits.ratelimit import Ticket
    from sluicegate.providers.models import Deployment
    from sluicegate.router import Attempt

__all__ = ("Call", "allowed_models", "error_response", "may_use", "parse_model_body", "random_id", "request_id_of",
           "request_options", "run_call", "take_attribution")

_decoder = msgspec.json.Decoder()
_rng = random.Random()  # seeded from os.urandom once

MODEL_PARAMS_SKIP = frozenset({"model", "messages", "input", "prompt", "stream", "stream_options", "user", "metadata",
                               "tools", "functions", "cache", "response_format"})


class Call:
    """Facts of one request, gathered for its log event."""

    __slots__ = ("attempts", "attribution", "body", "call_type", "ctx", "deployment", "event_id", "input_field",
                 "ip", "metadata", "raw", "request_id", "start", "ticket", "traceparent", "user_agent")

    def __init__(self, ctx: AuthContext, deployment: Deployment | None, body: dict[str, Any], request: Request,
                 request_id: str, *, call_type: str = "acompletion", input_field: str = "messages",
                 attribution: Attribution = NO_ATTRIBUTION, metadata: dict[str, Any] | None = None) -> None:
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
        self.attempts: list[Attempt] | None = None
        self.call_type = call_type
        self.input_field = input_field
        self.attribution = attribution
        self.metadata = metadata
        self.ticket: Ticket | None = None  # the rate limits' hold, settled with the call's one event

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
            messages=self.body.get(self.input_field), response=response,
            error_str=error_str or (error.message if error else None), error_information=error_information,
            model_parameters={k: v for k, v in self.body.items() if k not in MODEL_PARAMS_SKIP},
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



Attempt_ = Callable[["Call", "Deployment"], Awaitable[bytes]]


async def run_call(request: Request, *, call_type: str, input_field: str,
                   check: Callable[[dict[str, Any]], None], attempt: Attempt_,
                   tokens: Callable[[dict[str, Any]], int] | None = None) -> Response[Any]:
    """One non-streaming JSON call: parse (``check`` raises a 400 naming a field), authenticate, check the
    model, route (retries, fallbacks), answer the upstream's JSON, and log one event of ``call_type``."""
    gateway = gateway_of(request)
    rid = request_id_of(request)
    try:
        ctx = await gateway.authenticate(request)
        raw: bytes | None = await request.body()
        body, model = parse_model_body(raw or b"")
        check(body)
        attribution, metadata = take_attribution(body, request)
        if metadata is not None:
            raw = None  # the body changed: re-encode it for the upstream
    except ApiError as exc:
        return error_response(exc, rid)
    group = gateway.router.resolve(model)
    call = Call(ctx, group.deployments[0] if group else None, body, request, rid, call_type=call_type,
                input_field=input_field, attribution=attribution, metadata=metadata)
    call.raw = raw
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
        await gateway.spend.check(ctx, await gateway.spend.end_user(attribution.end_user))  # budgets
        call.ticket = await gateway.limits.check(ctx, model)  # rate limits: settled with the call's event
        await gateway.router.ready(group)
        try:
            outcome = await gateway.router.call(group, lambda d: attempt(call, d), options=options,
                                                tokens=tokens(body) if tokens is not None else 0)
        except RouterFailure as failure:
            call.deployment = failure.deployment or call.deployment
            call.attempts = failure.attempts
            raise failure.error from None
        call.deployment = outcome.deployment
        call.attempts = outcome.attempts
        content = outcome.result
        try:
            parsed = _decoder.decode(content)
        except msgspec.DecodeError:
            raise UpstreamError(502, "upstream returned a body that is not JSON", type="upstream_error",
                                code="502") from None
    except ApiError as exc:
        gateway.record(call.event(status="failure", error=exc), ctx)
        return error_response(exc, rid)
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    usage = usage if isinstance(usage, dict) else None
    outcome.finish(int((usage or {}).get("total_tokens") or 0))
    gateway.record(call.event(status="success", response=parsed, usage=usage), ctx)
    return Response(content=content, media_type="application/json",
                    headers={"x-request-id": rid, **call.limit_headers()})
