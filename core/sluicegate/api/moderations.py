"""``POST /v1/moderations`` (and ``/moderations``): OpenAI's moderation, through the shared pipeline
(``amoderation`` events; the input is logged, and redacted, as messages are)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post

from sluicegate.api.pipeline import Endpoint, run_call
from sluicegate.errors import ApiError

__all__ = ("moderations", "moderations_v1")


class Moderations(Endpoint):
    name = "moderations"
    call_type = "amoderation"
    input_field = "input"

    def check(self, body: dict[str, Any]) -> None:
        value = body.get("input")
        if not (isinstance(value, str) and value) and not (isinstance(value, list) and value):
            raise ApiError(400, "input: required: a string, an array of strings or an array of text and image "
                                "parts", param="input")

    def streaming(self, body: dict[str, Any]) -> bool:
        if body.get("stream"):
            raise ApiError(400, "stream: moderations are not streamed", param="stream")
        return False


_ENDPOINT = Moderations()


@post("/v1/moderations", status_code=200)
async def moderations_v1(request: Request) -> Response[Any]:
    return await run_call(request, _ENDPOINT)


@post("/moderations", status_code=200)
async def moderations(request: Request) -> Response[Any]:
    return await run_call(request, _ENDPOINT)
