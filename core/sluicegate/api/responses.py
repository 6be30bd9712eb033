"""OpenAI's Responses API: ``POST /v1/responses`` (streamed or not), ``GET`` / ``DELETE /v1/responses/{id}`` and
``GET /v1/responses/{id}/input_items``, each also without ``/v1``.

An upstream that serves ``responses`` (OpenAI, Azure) gets the body as it came, and stores the response as it
does. For a provider that serves chat only, the request is translated to chat and the answer back to a
``response`` object, streamed as the Responses API's events (:mod:`sluicegate.api.to_chat`); such responses are
not stored, so ``previous_response_id`` is refused for them by name.

A stored response is looked up without a model: the gateway asks each upstream that stores responses among the
models the key may use (each distinct upstream once) and answers from the first that has it, so nothing about
a response is kept in the gateway.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, delete, get, post

from sluicegate.api.common import gateway_of
from sluicegate.api.completions import ask_chat, open_chat
from sluicegate.api.pipeline import (
    Endpoint,
    SSEAssembler,
    allowed_models,
    error_response,
    request_id_of,
    run_call,
)
from sluicegate.api.to_chat import ResponsesStream, chat_to_response, responses_to_chat
from sluicegate.errors import ApiError
from sluicegate.providers.base import UpstreamError

if TYPE_CHECKING:
    from sluicegate.api.pipeline import Assembler, Call
    from sluicegate.providers.models import Deployment

__all__ = ("create_response", "create_response_v1", "delete_response", "delete_response_v1", "get_response",
           "get_response_v1", "input_items", "input_items_v1", "usage_of")

_json = msgspec.json.Encoder()
_RESPONSE_ID = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_LIST_QUERY = ("after", "before", "limit", "order", "include[]", "include")


def usage_of(usage: Any) -> dict[str, Any] | None:
    """The Responses API's usage in OpenAI chat's names (what the event and the price calculation read)."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(usage.get("total_tokens") or prompt + completion),
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


class _ResponsesAssembler(SSEAssembler):
    """Keeps the ``response`` of the stream's last event (``response.completed`` carries the whole answer)."""

    __slots__ = ("response",)

    def __init__(self) -> None:
        super().__init__()
        self.response: dict[str, Any] | None = None

    def event(self, name: str | None, data: dict[str, Any]) -> None:
        kind = name or data.get("type")
        if kind == "error":
            self.error = str(data.get("message") or "error event")
            return
        response = data.get("response")
        if isinstance(response, dict):
            self.response = response
            self.response_id = response.get("id")
            if kind in ("response.completed", "response.incomplete"):
                self.done = True
            elif kind == "response.failed":
                self.done = True
                error = response.get("error")
                self.error = str(error.get("message") if isinstance(error, dict) else error or "response failed")

    def result(self) -> tuple[Any, dict[str, Any] | None]:
        return self.response, usage_of((self.response or {}).get("usage"))


class Responses(Endpoint):
    name = "responses"
    call_type = "aresponses"
    input_field = "input"

    def check(self, body: dict[str, Any]) -> None:
        value = body.get("input")
        if value is None and not body.get("previous_response_id") and not body.get("prompt"):
            raise ApiError(400, "input: required (a string or an array of input items)", param="input")
        if value is not None and not isinstance(value, str | list):
            raise ApiError(400, "input: expected a string or an array of input items", param="input")
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise ApiError(400, "instructions: expected a string", param="instructions")

    def logged_input(self, body: dict[str, Any]) -> Any:
        """``instructions`` as a system message before the input (both redacted as messages are)."""
        value = body.get("input")
        items = [{"role": "user", "content": value}] if isinstance(value, str) else list(value or [])
        if isinstance(body.get("instructions"), str):
            items.insert(0, {"role": "system", "content": body["instructions"]})
        return items

    async def answer(self, call: Call, deployment: Deployment) -> bytes:
        if self.name in deployment.provider.endpoints and deployment.mock_response is None:
            return await super().answer(call, deployment)
        chat = await ask_chat(call, deployment, responses_to_chat(call.body, deployment))
        return _json.encode(chat_to_response(chat, call.body))

    async def open(self, call: Call, deployment: Deployment) -> Any:
        if self.name in deployment.provider.endpoints and deployment.mock_response is None:
            return await super().open(call, deployment)
        chat = responses_to_chat(call.body, deployment)
        return ResponsesStream(await open_chat(call, deployment, chat), call.body)

    def media_type(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        return "text/event-stream" if body.get("stream") else "application/json"

    def logged(self, call: Call, parsed: Any) -> tuple[Any, dict[str, Any] | None]:
        return parsed, usage_of(parsed.get("usage") if isinstance(parsed, dict) else None)

    def assembler(self, call: Call, headers: dict[str, str] | None) -> Assembler:
        return _ResponsesAssembler()

    def error_frame(self, error: ApiError) -> bytes | None:
        return b"event: error\ndata: " + _json.encode({"type": "error", "code": error.code, "message": error.message,
                                                       "param": error.param}) + b"\n\n"


_ENDPOINT = Responses()


@post("/v1/responses", status_code=200)
async def create_response_v1(request: Request) -> Response[Any]:
    return await run_call(request, _ENDPOINT)


@post("/responses", status_code=200)
async def create_response(request: Request) -> Response[Any]:
    return await run_call(request, _ENDPOINT)


async def _stored(request: Request, response_id: str, method: str, suffix: str = "") -> Response[bytes]:
    """A stored response (or its input items), from the first upstream among the key's models that has it."""
    gateway = gateway_of(request)
    rid = request_id_of(request)
    try:
        ctx = await gateway.authenticate(request)
        if not _RESPONSE_ID.match(response_id):
            raise ApiError(400, "response_id: expected letters, digits, '_' and '-' (as OpenAI's resp_... ids)",
                           param="response_id")
        query = "&".join(f"{k}={v}" for k, v in request.url.query_params.items()
                         if k in _LIST_QUERY and re.fullmatch(r"[A-Za-z0-9_.:-]{1,256}", str(v))) if suffix else ""
        seen = set()
        for name in allowed_models(gateway, ctx):
            group = gateway.router.resolve(name)
            for deployment in group.deployments if group is not None else ():
                provider = deployment.provider
                where = (deployment.custom_llm_provider, deployment.api_base, deployment.api_key)
                if "responses" not in provider.endpoints or deployment.mock_response is not None or where in seen:
                    continue
                seen.add(where)
                await gateway.router.ready(group)
                try:
                    content = await provider.forward("responses", b"", rid, path=f"responses/{response_id}{suffix}",
                                                     query=query, method=method, content_type=None)
                except UpstreamError as exc:
                    if exc.status == 404:
                        continue
                    raise
                return Response(content=content, media_type="application/json", headers={"x-request-id": rid})
        raise ApiError(404, f"response {response_id!r} not found at any upstream this key may use",
                       type="invalid_request_error", param="response_id", code="not_found")
    except ApiError as exc:
        return error_response(exc, rid)


@get("/v1/responses/{response_id:str}")
async def get_response_v1(request: Request, response_id: str) -> Response[bytes]:
    return await _stored(request, response_id, "GET")


@get("/responses/{response_id:str}")
async def get_response(request: Request, response_id: str) -> Response[bytes]:
    return await _stored(request, response_id, "GET")


@delete("/v1/responses/{response_id:str}", status_code=200)
async def delete_response_v1(request: Request, response_id: str) -> Response[bytes]:
    return await _stored(request, response_id, "DELETE")


@delete("/responses/{response_id:str}", status_code=200)
async def delete_response(request: Request, response_id: str) -> Response[bytes]:
    return await _stored(request, response_id, "DELETE")


@get("/v1/responses/{response_id:str}/input_items")
async def input_items_v1(request: Request, response_id: str) -> Response[bytes]:
    return await _stored(request, response_id, "GET", "/input_items")


@get("/responses/{response_id:str}/input_items")
async def input_items(request: Request, response_id: str) -> Response[bytes]:
    return await _stored(request, response_id, "GET", "/input_items")
