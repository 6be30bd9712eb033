"""``POST /v1/completions`` (and ``/completions``): OpenAI's legacy text completions, streamed or not.

An upstream that serves ``completions`` gets the body as it came; for a provider that serves chat only, the
prompt becomes one user message and the chat answer comes back as a ``text_completion``
(:mod:`sluicegate.api.to_chat`). Everything else (auth, restrictions, routing, the ``atext_completion`` event) is
the shared pipeline's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, post

from sluicegate.api.pipeline import Endpoint, MockSource, SSEAssembler, run_call
from sluicegate.api.to_chat import TextCompletionStream, chat_to_text_completion, completion_to_chat
from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from sluicegate.api.pipeline import Assembler, Call
    from sluicegate.providers.models import Deployment

__all__ = ("ask_chat", "completions", "completions_v1", "open_chat")

_json = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


async def ask_chat(call: Call, deployment: Deployment, chat: dict[str, Any]) -> dict[str, Any]:
    """``chat`` answered by ``deployment`` as chat (its provider translates as for ``/v1/chat/completions``)."""
    from sluicegate.providers.upstream import mock_completion

    if deployment.mock_response is not None:
        return _decoder.decode(mock_completion(deployment, chat))
    chat = {**chat, "model": deployment.upstream_model}
    return _decoder.decode(await deployment.provider.complete_bytes(chat, None, call.request_id))


async def open_chat(call: Call, deployment: Deployment, chat: dict[str, Any]) -> Any:
    """``chat`` streamed by ``deployment``: chat SSE bytes from ``aiter_raw()``."""
    from sluicegate.providers.upstream import mock_stream

    if deployment.mock_response is not None:
        return MockSource(mock_stream(deployment, chat))
    chat = {**chat, "model": deployment.upstream_model}
    return await deployment.provider.open_stream(chat, None, call.request_id)


def _prompt_ok(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return True
    if not isinstance(prompt, list) or not prompt:
        return False
    tokens = all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    return tokens or all(isinstance(p, str) for p in prompt) or all(
        isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p) for p in prompt)


class _TextAssembler(SSEAssembler):
    __slots__ = ("choices", "finish", "model", "usage")

    def __init__(self) -> None:
        super().__init__()
        self.choices: dict[int, list[str]] = {}
        self.finish: dict[int, Any] = {}
        self.usage: dict[str, Any] | None = None
        self.model: Any = None

    def event(self, name: str | None, data: dict[str, Any]) -> None:
        self.response_id = self.response_id or data.get("id")
        self.model = self.model or data.get("model")
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        for choice in data.get("choices") or ():
            if isinstance(choice, dict):
                index = int(choice.get("index") or 0)
                self.choices.setdefault(index, []).append(str(choice.get("text") or ""))
                if choice.get("finish_reason"):
                    self.finish[index] = choice["finish_reason"]

    def result(self) -> tuple[Any, dict[str, Any] | None]:
        choices = [{"text": "".join(self.choices[i]), "index": i, "finish_reason": self.finish.get(i)}
                   for i in sorted(self.choices)]
        return {"id": self.response_id, "object": "text_completion", "model": self.model, "choices": choices,
                **({"usage": self.usage} if self.usage else {})}, self.usage


class Completions(Endpoint):
    name = "completions"
    call_type = "atext_completion"
    input_field = "prompt"

    def check(self, body: dict[str, Any]) -> None:
        if not _prompt_ok(body.get("prompt")):
            raise ApiError(400, "prompt: required: a string, an array of strings, an array of tokens or an array "
                                "of token arrays", param="prompt")

    async def answer(self, call: Call, deployment: Deployment) -> bytes:
        if self.name in deployment.provider.endpoints and deployment.mock_response is None:
            return await super().answer(call, deployment)
        chat = await ask_chat(call, deployment, completion_to_chat(call.body, deployment))
        return _json.encode(chat_to_text_completion(chat))

    async def open(self, call: Call, deployment: Deployment) -> Any:
        if self.name in deployment.provider.endpoints and deployment.mock_response is None:
            return await super().open(call, deployment)
        chat = completion_to_chat(call.body, deployment)
        options = call.body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return TextCompletionStream(await open_chat(call, deployment, chat), include_usage)

    def media_type(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        return "text/event-stream" if body.get("stream") else "application/json"

    def assembler(self, call: Call, headers: dict[str, str] | None) -> Assembler:
        return _TextAssembler()


_ENDPOINT = Completions()


@post("/v1/completions", status_code=200)
async def completions_v1(request: Request) -> Response[Any]:
    return await run_call(request, _ENDPOINT)


@post("/completions", status_code=200)
async def completions(request: Request) -> Response[Any]:
    return await run_call(request, _ENDPOINT)
