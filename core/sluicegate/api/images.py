"""``POST /v1/images/generations`` (and ``/images/generations``): image generation through the shared pipeline.

The upstream's answer goes to the client as it came; the log event (``aimage_generation``) never holds an image:
each ``b64_json`` is replaced by a placeholder with its type and size, whatever the redaction setting. Its usage
holds the number of images and their size (and the upstream's token counts, for models priced by token).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Request, Response, post

from sluicegate.api.pipeline import Endpoint, binary_placeholder, run_call
from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from sluicegate.api.pipeline import Call

__all__ = ("image_generations", "image_generations_v1")

MAX_IMAGES = 10
"""OpenAI's limit on ``n``."""


def _decoded_size(b64: str) -> int:
    return len(b64) * 3 // 4 - b64[-2:].count("=")


class ImageGenerations(Endpoint):
    name = "images/generations"
    call_type = "aimage_generation"
    input_field = "prompt"

    def check(self, body: dict[str, Any]) -> None:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "prompt: required (a non-empty string)", param="prompt")
        n = body.get("n")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES):
            raise ApiError(400, f"n: expected an integer from 1 to {MAX_IMAGES}", param="n")
        if body.get("stream"):
            raise ApiError(400, "stream: streamed partial images are not supported by this gateway; leave stream "
                                "unset", param="stream")

    def streaming(self, body: dict[str, Any]) -> bool:
        return False

    def logged(self, call: Call, parsed: Any) -> tuple[Any, dict[str, Any] | None]:
        if not isinstance(parsed, dict):
            return parsed, None
        kind = f"image/{call.body.get('output_format') or 'png'}"
        data = []
        for item in parsed.get("data") or ():
            if isinstance(item, dict) and isinstance(item.get("b64_json"), str):
                item = {**item, "b64_json": binary_placeholder(kind, _decoded_size(item["b64_json"]))}
            data.append(item)
        response = {**parsed, "data": data}
        usage: dict[str, Any] = {"images": len(data), "size": parsed.get("size") or call.body.get("size"),
                                 "quality": parsed.get("quality") or call.body.get("quality")}
        tokens = parsed.get("usage")
        if isinstance(tokens, dict):  # gpt-image-1: priced by token
            usage["prompt_tokens"] = int(tokens.get("input_tokens") or 0)
            usage["completion_tokens"] = int(tokens.get("output_tokens") or 0)
            usage["total_tokens"] = int(tokens.get("total_tokens") or 0)
        response["usage"] = {**(tokens if isinstance(tokens, dict) else {}), **usage}  # what was priced
        return response, usage


_ENDPOINT = ImageGenerations()


@post("/v1/images/generations", status_code=200)
async def image_generations_v1(request: Request) -> Response[Any]:
    return await run_call(request, _ENDPOINT)


@post("/images/generations", status_code=200)
async def image_generations(request: Request) -> Response[Any]:
    return await run_call(request, _ENDPOINT)
