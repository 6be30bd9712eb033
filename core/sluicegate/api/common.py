"""Helpers shared by the routes: the gateway from the request, JSON bodies with clear errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
from litestar import Response

from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from litestar import Request

    from sluicegate.gateway import Gateway

__all__ = ("AdminRequest", "Alias", "Page", "TeamId", "accepted_fields", "decode_body", "gateway_of", "json_response",
           "page_of")

T = TypeVar("T")
TEAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,254}$"
TeamId = Annotated[str, msgspec.Meta(pattern=TEAM_ID_PATTERN, description=(
    "1-255 characters: letters, digits and _ . : @ - (starting with a letter or digit)"))]
Alias = Annotated[str, msgspec.Meta(max_length=255, pattern=r"^[^\x00]*$")]
_encoder = msgspec.json.Encoder()


MAX_PAGE_SIZE = 1000


class AdminRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The base of every admin request body. A field the Struct does not declare is refused by
    :func:`decode_body` with a 400 naming it and listing the accepted ones: never silently dropped. The accepted
    list is the Struct's own fields, so supporting a new field is declaring it."""


def accepted_fields(type_: Any) -> tuple[str, ...]:
    """The fields a request Struct accepts, in declaration order."""
    return tuple(getattr(type_, "__struct_fields__", ()))


class Page(msgspec.Struct, frozen=True):
    """A page of a listing: ``page`` from 1, ``size`` rows."""

    page: int
    size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    def total_pages(self, total: int) -> int:
        return max(1, -(-total // self.size))


def _positive(value: str | int | None, name: str, default: int, limit: int | None = None) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ApiError(422, f"{name}: expected a whole number, got {str(value)[:40]!r}", param=name) from None
    if number < 1 or (limit is not None and number > limit):
        bound = f"between 1 and {limit}" if limit is not None else "1 or more"
        raise ApiError(422, f"{name}: must be {bound}, got {number}", param=name)
    return number


def page_of(page: str | None, page_size: str | None, *, default_size: int, size_name: str = "page_size") -> Page:
    """Parse LiteLLM's ``page``/``page_size`` query parameters (422 naming the parameter when out of range)."""
    return Page(_positive(page, "page", 1), _positive(page_size, size_name, default_size, MAX_PAGE_SIZE))


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
    except UnicodeDecodeError:  # msgspec checks UTF-8 inside strings and raises this, not a DecodeError
        raise ApiError(400, "request body is not valid UTF-8: send JSON encoded as UTF-8",
                       param="body") from None
    except RecursionError:  # hostile nesting: msgspec gives up at the interpreter's depth limit
        raise ApiError(400, "JSON nested too deeply", param="body") from None


async def decode_body(request: Request, type_: type[T]) -> T:
    """The body as ``type_``; for an :class:`AdminRequest`, an unknown field is a 400 that names it and lists the
    fields the route accepts (LiteLLM's error shape)."""
    raw = await request.body()
    try:
        return decode_json(raw, type_)
    except ApiError as exc:
        if exc.status != 422 or not isinstance(type_, type) or not issubclass(type_, AdminRequest) \
                or not exc.message.endswith("Object contains unknown field `" + str(exc.param) + "`"):
            raise
        decode_json(raw)  # msgspec meets the unknown field before the end: a body that is not JSON is that error
        field = str(exc.param)
        accepted = accepted_fields(type_)
        raise ApiError(400, f"{field}: not supported by {request.method} {request.url.path}; accepted fields: "
                       f"{', '.join(accepted)}", param=field, extra={"accepted_fields": list(accepted)}) from None
