"""``POST /v1/audio/transcriptions`` (a multipart upload) and ``POST /v1/audio/speech`` (audio streamed back as
it arrives), each also without ``/v1``, through the shared pipeline.

Audio never enters a log event: the uploaded file is logged as a placeholder with its type and size, the speech
as its media type and byte count, whatever the redaction setting. The transcript is logged as the response's
``text`` and redacted with the rest when message logging is off. Usage: the audio's seconds where the upstream
tells them (``verbose_json``'s ``duration``, ``usage.seconds``) or a WAV file's header does; the number of
characters spoken for speech (how ``whisper-1`` and ``tts-1`` are priced).
"""

from __future__ import annotations

import io
import json
import uuid
import wave
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, post
from litestar.datastructures import UploadFile

from sluicegate.api.pipeline import Assembler, Endpoint, binary_placeholder, run_call
from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from sluicegate.api.pipeline import Call
    from sluicegate.providers.models import Deployment

__all__ = ("MAX_AUDIO_BYTES", "speech", "speech_v1", "transcriptions", "transcriptions_v1")

MAX_AUDIO_BYTES = 25 * 1024 * 1024
"""OpenAI's limit on an uploaded audio file; the request may be this plus 1 MiB of other fields."""
UPLOAD_BODY_LIMIT = MAX_AUDIO_BYTES + 1024 * 1024
MAX_SPEECH_CHARS = 4096
_TEXT_FORMATS = ("text", "srt", "vtt")


def _seconds_of_wav(data: bytes) -> float | None:
    try:
        with wave.open(io.BytesIO(data)) as audio:
            rate = audio.getframerate()
            return audio.getnframes() / rate if rate else None
    except (wave.Error, EOFError, ValueError):
        return None


def _multipart(fields: list[tuple[str, str]], file: tuple[str, str, bytes]) -> tuple[bytes, str]:
    boundary = f"sluicegate-{uuid.uuid4().hex}"
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    filename, content_type, data = file
    safe = filename.replace('"', "%22").replace("\r", "").replace("\n", "")
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Transcriptions(Endpoint):
    name = "audio/transcriptions"
    call_type = "atranscription"
    input_field = "file"

    async def read(self, request: Request) -> tuple[dict[str, Any], bytes | None, Any]:
        if request.content_type[0] != "multipart/form-data":
            raise ApiError(400, "body: send multipart/form-data with the audio as the 'file' part (as the OpenAI "
                                "SDKs do)", param="file")
        form = await request.form()
        body: dict[str, Any] = {}
        fields: list[tuple[str, str]] = []
        upload = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "file" or upload is not None:
                    raise ApiError(400, f"{name}: only one file part, named 'file', is accepted", param=name)
                upload = value
                continue
            fields.append((name, str(value)))
            key = name.removesuffix("[]")
            if name.endswith("[]"):
                body.setdefault(key, []).append(str(value))
            else:
                body[key] = str(value)
        if upload is None:
            raise ApiError(400, "file: required (the audio to transcribe, as a file part)", param="file")
        data = await upload.read()
        if len(data) > MAX_AUDIO_BYTES:
            raise ApiError(413, f"file: {len(data)} bytes is more than the limit of {MAX_AUDIO_BYTES} bytes (25 MiB)",
                           param="file", code="413")
        if not data:
            raise ApiError(400, "file: the audio file is empty", param="file")
        if not body.get("model"):
            raise ApiError(400, "model: required (a string naming a configured model)", param="model")
        if isinstance(body.get("metadata"), str):  # a form field: LiteLLM's metadata as a JSON text
            try:
                body["metadata"] = json.loads(body["metadata"])
            except ValueError:
                raise ApiError(400, "metadata: expected a JSON object", param="metadata") from None
        content_type = upload.content_type or "application/octet-stream"
        placeholder = binary_placeholder(f"audio {content_type} {upload.filename or 'file'}", len(data))
        return body, None, ((fields, (upload.filename or "audio", content_type, data)), placeholder)

    def streaming(self, body: dict[str, Any]) -> bool:
        if str(body.get("stream", "")).lower() in ("true", "1"):
            raise ApiError(400, "stream: streamed transcriptions are not supported by this gateway; leave stream "
                                "unset", param="stream")
        return False

    async def answer(self, call: Call, deployment: Deployment) -> bytes:
        if deployment.mock_response is not None:
            raise self.unsupported_mock(deployment)
        fields, file = call.upload
        # what the pipeline took out of the body (metadata, num_retries, ...) stays out of the upload too
        fields = [(k, deployment.upstream_model if k == "model" else v) for k, v in fields
                  if k.removesuffix("[]") in call.body]
        payload, content_type = _multipart(fields, file)
        return await deployment.provider.forward(self.name, payload, call.request_id, content_type=content_type)

    def media_type(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        return "text/plain" if body.get("response_format") in _TEXT_FORMATS else "application/json"

    def logged(self, call: Call, parsed: Any) -> tuple[Any, dict[str, Any] | None]:
        response = parsed if isinstance(parsed, dict) else {"text": parsed}
        usage: dict[str, Any] = {}
        upstream = response.get("usage")
        seconds = response.get("duration")
        if isinstance(upstream, dict):
            if upstream.get("type") == "duration":
                seconds = upstream.get("seconds")
            else:  # token-priced models (gpt-4o-transcribe)
                usage["prompt_tokens"] = int(upstream.get("input_tokens") or 0)
                usage["completion_tokens"] = int(upstream.get("output_tokens") or 0)
                usage["total_tokens"] = int(upstream.get("total_tokens") or 0)
        if not isinstance(seconds, int | float):
            seconds = _seconds_of_wav(call.upload[1][2])
        if isinstance(seconds, int | float):
            usage["audio_seconds"] = float(seconds)
        if usage:  # what was priced, in the event
            response = {**response, "usage": {**(upstream if isinstance(upstream, dict) else {}), **usage}}
        return response, usage or None


class _SpeechAssembler(Assembler):
    __slots__ = ("characters", "kind")

    def __init__(self, kind: str, characters: int) -> None:
        super().__init__()
        self.kind = kind
        self.characters = characters

    def result(self) -> tuple[Any, dict[str, Any] | None]:
        usage = {"characters": self.characters}
        return ({"type": "audio", "media_type": self.kind, "audio": binary_placeholder(self.kind, self.bytes),
                 "usage": usage}, usage)


class Speech(Endpoint):
    name = "audio/speech"
    call_type = "aspeech"
    input_field = "input"

    def check(self, body: dict[str, Any]) -> None:
        text = body.get("input")
        if not isinstance(text, str) or not text or len(text) > MAX_SPEECH_CHARS:
            raise ApiError(400, f"input: required: the text to speak (1 to {MAX_SPEECH_CHARS} characters)",
                           param="input")
        if not isinstance(body.get("voice"), str | dict):
            raise ApiError(400, "voice: required (a voice name such as 'alloy')", param="voice")

    def streaming(self, body: dict[str, Any]) -> bool:
        return True  # audio is relayed as it arrives, whatever stream_format says

    def media_type(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        return (headers or {}).get("content-type") or "application/octet-stream"

    def assembler(self, call: Call, headers: dict[str, str] | None) -> Assembler:
        return _SpeechAssembler(self.media_type(call.body, headers), len(call.body.get("input") or ""))

    def error_frame(self, error: ApiError) -> bytes | None:
        return None  # binary: the broken-off audio ends, the event says why


_TRANSCRIPTIONS = Transcriptions()
_SPEECH = Speech()


@post("/v1/audio/transcriptions", status_code=200, request_max_body_size=UPLOAD_BODY_LIMIT)
async def transcriptions_v1(request: Request) -> Response[Any]:
    return await run_call(request, _TRANSCRIPTIONS)


@post("/audio/transcriptions", status_code=200, request_max_body_size=UPLOAD_BODY_LIMIT)
async def transcriptions(request: Request) -> Response[Any]:
    return await run_call(request, _TRANSCRIPTIONS)


@post("/v1/audio/speech", status_code=200)
async def speech_v1(request: Request) -> Response[Any]:
    return await run_call(request, _SPEECH)


@post("/audio/speech", status_code=200)
async def speech(request: Request) -> Response[Any]:
    return await run_call(request, _SPEECH)
