"""OpenAI-shaped errors: every error body is ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ("ApiError", "error_body")


class ApiError(Exception):
    """An error answered to the client with ``status`` and an OpenAI-shaped JSON body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002
                 param: str | None = None, code: str | int | None = None,
                 extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code if code is not None else str(status)
        self.extra = extra

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, param=self.param, code=self.code, extra=self.extra)


def error_body(message: str, *, type: str, param: str | None = None,  # noqa: A002
               code: str | int | None = None, extra: dict[str, Any] | None = None) -> bytes:
    error: dict[str, Any] = {"message": message, "type": type, "param": param, "code": code}
    if extra:
        error.update(extra)
    return msgspec.json.encode({"error": error})
