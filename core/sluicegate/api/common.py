"""Helpers shared by the routes: the gateway from the request, JSON bodies with clear errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
from litestar import Response

from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from litestar import Request

    from sluicegate.gateway import Gateway

__all__ = ("Alias", "TeamId", "decode_body", "gateway_of", "json_response")

T = TypeVar("T")
TEAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,254}$"
TeamId = Annotated[str, msgspec.Meta(pattern=TEAM_ID_PATTERN, description=(
    "1-255 characters: letters, digits and _ . : @ - (starting with a letter or digit)"))]
Alias = Annotated[str, msgspec.Meta(max_length=255, pattern=r"^[^\x00]*$")]
_encoder = msgspec.json.Encoder()


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(content=_encoder.encode(data), status_code=status, media_type="application/json",
                    headers=headers)


def _field_from(message: str) -> str | None:
    if " - at `$." in message:
        return message.rsplit(" - at `$.", 1)[1].rstrip("`")
    if "missing required field `" in message:
        return message.split("missing required field `", 1)[1].split("`", 1)[0]
    if "unknown field `" in message:
        return message.split("unknown field `", 1)[1].split("`", 1)[0]
    return None


def decode_json(raw: bytes, type_: type[T] | Any = Any) -> T:
    if not raw.strip():
        raise ApiError(400, "request body is empty; send a JSON object", param="body")
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = _field_from(message) or "body"
        reason = message.split(" - at ")[0]
        if field == "body" and reason.startswith("Expected `object`"):
            reason = f"expected a JSON object, got {reason.rsplit('got ', 1)[-1].strip('`')}"
        raise ApiError(422, f"{field}: {reason}", param=field) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}", param="body") from None
    except RecursionError:  # hostile nesting: msgspec gives up at the interpreter's depth limit
        raise ApiError(400, "JSON nested too deeply", param="body") from None


async def decode_body(request: Request, type_: type[T]) -> T:
    return decode_json(await request.body(), type_)
