"""``POST /v1/embeddings`` (and ``/embeddings``): OpenAI's embeddings through the shared call pipeline.

This module only checks the body and names the upstream call; auth, model restrictions, routing and the log event
(``call_type`` ``aembedding``, usage and cost) are :func:`sluicegate.api.pipeline.run_call`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, post

from sluicegate.api.pipeline import Endpoint, binary_placeholder, run_call
from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from sluicegate.api.pipeline import Call
    from sluicegate.providers.models import Deployment

__all__ = ("embeddings", "embeddings_v1")

MAX_INPUTS = 2048
"""OpenAI's limit on the number of inputs in one request."""
_json = msgspec.json.Encoder()


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def check_body(body: dict[str, Any]) -> None:
    """``input``: a string, an array of strings, an array of tokens or an array of token arrays (non-empty);
    ``encoding_format``: ``float`` or ``base64``; ``dimensions``: a positive integer."""
    value = body.get("input")
    if isinstance(value, str):
        ok = bool(value)
    elif isinstance(value, list) and value:
        ok = len(value) <= MAX_INPUTS and (all(isinstance(v, str) and v for v in value) or _is_tokens(value)
                                           or all(_is_tokens(v) for v in value))
    else:
        ok = False
    if not ok:
        raise ApiError(400, "input: required: a non-empty string, or an array of non-empty strings, of tokens or "
                            f"of token arrays (at most {MAX_INPUTS})", param="input")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise ApiError(400, "encoding_format: expected 'float' or 'base64'", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        raise ApiError(400, "dimensions: expected a positive integer", param="dimensions")
    if body.get("stream"):
        raise ApiError(400, "stream: embeddings are not streamed", param="stream")


def mock_embeddings(deployment: Deployment, body: dict[str, Any]) -> bytes:
    """The answer of a ``mock_response`` model: one small vector per input, usage counted in words."""
    value = body["input"]
    inputs = [value] if isinstance(value, str) or _is_tokens(value) else value
    size = body.get("dimensions") or 8
    tokens = sum(len(v) if isinstance(v, list) else len(v.split()) for v in inputs)
    return _json.encode({
        "object": "list", "model": deployment.upstream_model,
        "data": [{"object": "embedding", "index": i, "embedding": [0.0] * size} for i in range(len(inputs))],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


class Embeddings(Endpoint):
    name = "embeddings"
    call_type = "aembedding"
    input_field = "input"
    cacheable = True

    def check(self, body: dict[str, Any]) -> None:
        check_body(body)

    async def answer(self, call: Call, deployment: Deployment) -> bytes:
        if deployment.mock_response is not None:
            return mock_embeddings(deployment, call.body)
        body, raw = call.upstream_body(deployment)
        return await deployment.provider.endpoint_bytes("embeddings", body, raw, call.request_id)

    def logged(self, call: Call, parsed: Any) -> tuple[Any, dict[str, Any] | None]:
        """The vectors stay out of the event (a batch of them is megabytes nobody reads in a trace): each is
        logged as its size."""
        response, usage = super().logged(call, parsed)
        data = parsed.get("data") if isinstance(parsed, dict) else None
        if isinstance(data, list):
            response = {**parsed, "data": [_vector_placeholder(d) for d in data]}
        return response, usage


def _vector_placeholder(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    vector = item.get("embedding")
    if isinstance(vector, list):
        return {**item, "embedding": f"<{len(vector)} floats, not logged>"}
    if isinstance(vector, str):
        return {**item, "embedding": binary_placeholder("base64 floats", len(vector) * 3 // 4)}
    return item


_ENDPOINT = Embeddings()


async def _embeddings(request: Request) -> Response[Any]:
    return await run_call(request, _ENDPOINT)


@post("/v1/embeddings", status_code=200)
async def embeddings_v1(request: Request) -> Response[Any]:
    return await _embeddings(request)


@post("/embeddings", status_code=200)
async def embeddings(request: Request) -> Response[Any]:
    return await _embeddings(request)
