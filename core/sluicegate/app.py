"""``create_app(settings)`` → the Litestar application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from sluicegate.api import (audio, audit, chat, completions, config_reload, embeddings, end_users, health, images,
                            introspection, keys, members, messages, metrics, model_info, moderations, responses,
                            spend, teams, users)
from sluicegate.console import console_router
from sluicegate.errors import ApiError, error_body
from sluicegate.gateway import Gateway
from sluicegate.litestar_plugin import SluicegatePlugin

if TYPE_CHECKING:
    from collections.abc import Mapping

    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from sluicegate.config import Settings

__all__ = ("create_app",)

log = logging.getLogger("sluicegate")
MAX_BODY = 8 * 1024 * 1024


def _json(status: int, body: bytes) -> Response[bytes]:
    return Response(content=body, status_code=status, media_type="application/json")


def _api_error(_: Request, exc: ApiError) -> Response[bytes]:
    return Response(content=exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers)


def _http_error(request: Request, exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    message = exc.detail or "error"
    param = None
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        first = exc.extra[0]
        if isinstance(first, dict):
            param = first.get("key")
            message = f"{param}: {first.get('message')}" if param else str(first.get("message"))
        status = 422 if status == 400 and param else status
    if isinstance(exc, NotFoundException):
        message = "no such route"
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            405: "invalid_request_error", 408: "timeout", 413: "invalid_request_error"}.get(
                status, "invalid_request_error")
    if status == 413:
        limit = MAX_BODY
        try:  # a route may set its own (audio uploads)
            limit = request.route_handler.resolve_request_max_body_size() or MAX_BODY
        except Exception:  # no route matched
            pass
        message = f"request body too large (limit {limit / (1024 * 1024):g} MiB)"
        param = "body"
    if status == 408:
        param = "body"
    response = _json(status, error_body(message, type=kind, param=param, code=str(status)))
    if status == 408:  # the rest of the body may still be arriving: end the connection with the answer
        response.headers["connection"] = "close"
    return response


def _database_error(request: Request, exc: DBAPIError) -> Response[bytes]:
    if isinstance(exc, DataError | IntegrityError):
        log.warning("database refused a value on %s %s: %s", request.method, request.url.path, type(exc.orig).__name__)
        return _json(422, error_body("a value was refused by the database (too long or not storable)",
                                     type="invalid_request_error", param="body", code="422"))
    log.error("database unavailable on %s %s: %s", request.method, request.url.path, type(exc.orig).__name__)
    return _json(503, error_body("the database is unavailable; retry shortly", type="service_unavailable",
                                 code="503"))


def _unexpected(request: Request, exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(500, error_body("internal error; the gateway logged the details", type="internal_error",
                                 code="500"))


class _BodyGuard:
    """One request's ``receive`` with the body deadline: one timer for the whole body, armed at the first
    ``receive()`` (routes that never read a body never arm it) and stopped when the body is complete. At the
    deadline a ``receive()`` under way is cancelled and a later one refused, both as 408. ``asyncio.timeout()``
    around every ``receive()`` did the same for more: 5.4 instead of 3.2 us of middleware per request (py-spy put
    it and this middleware at ~4 % of the gateway's CPU under load)."""

    __slots__ = ("_receive", "cancelling", "deadline", "done", "expired", "seconds", "task", "timer", "waiting")

    def __init__(self, receive: Receive, deadline: float, seconds: float) -> None:
        self._receive = receive
        self.deadline = deadline
        self.seconds = seconds
        self.done = False  # the whole body arrived: receive() only waits for a disconnect now, no deadline
        self.waiting = False
        self.expired = False
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[Any] | None = None
        self.cancelling = 0

    def _late(self) -> HTTPException:
        return HTTPException(status_code=408, detail=f"body: not received within {self.seconds:g} s")

    async def receive(self) -> Message:
        if self.done:
            return await self._receive()
        if self.expired:
            raise self._late()
        if self.timer is None:
            loop = asyncio.get_running_loop()
            if loop.time() >= self.deadline:
                self.expired = True
                raise self._late()
            task = self.task = asyncio.current_task()
            self.cancelling = task.cancelling() if task is not None else 0
            self.timer = loop.call_at(self.deadline, self._expire)
        self.waiting = True
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            task = self.task
            if self.expired and task is not None and task.uncancel() <= self.cancelling:
                raise self._late() from None  # our cancellation, not the server's
            raise
        finally:
            self.waiting = False
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.done = True
            self.stop()
        return message

    def _expire(self) -> None:
        self.timer = None
        self.expired = True
        if self.waiting and self.task is not None:
            self.task.cancel()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def body_deadline(seconds: float) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware: the request body must arrive within ``seconds`` of the request's start (uvicorn has no
    such limit, so a client dribbling its body would hold a connection and a task indefinitely)."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or seconds <= 0:
                await app(scope, receive, send)
                return
            guard = _BodyGuard(receive, asyncio.get_running_loop().time() + seconds, seconds)
            try:
                await app(scope, guard.receive, send)
            finally:
                guard.stop()

        return guarded

    return middleware


def create_app(settings: Settings, *, environ: Mapping[str, str] | None = None, http_client: str = "builtin",
               debug: bool = False, tune_gc: bool = False, workers: int = 1, allow_unknown_keys: bool = False,
               reload_on_sighup: bool = False, delivery: str = "inline") -> Litestar:
    """The app; ``delivery="process"`` makes it a serving worker that appends events to its log for the delivery
    process (``sluicegate serve``'s default) instead of delivering them itself."""
    gateway = Gateway(settings, environ=environ, http_client=http_client, tune_gc=tune_gc, workers=workers,
                      allow_unknown_keys=allow_unknown_keys, delivery=delivery)
    handlers: list[Any] = [
        chat.chat_completions_v1, chat.chat_completions, chat.list_models_v1, chat.list_models,
        chat.retrieve_model_v1, chat.retrieve_model, embeddings.embeddings_v1, embeddings.embeddings,
        messages.messages_v1, messages.messages, messages.count_tokens_v1, messages.count_tokens,
        completions.completions_v1, completions.completions,
        responses.create_response_v1, responses.create_response, responses.get_response_v1, responses.get_response,
        responses.delete_response_v1, responses.delete_response, responses.input_items_v1, responses.input_items,
        images.image_generations_v1, images.image_generations, audio.transcriptions_v1, audio.transcriptions,
        audio.speech_v1, audio.speech, moderations.moderations_v1, moderations.moderations,
        model_info.model_info_v1, model_info.model_info,
        keys.generate, keys.update, keys.key_info, keys.delete_keys, keys.list_keys, keys.key_health,
        teams.new_team, teams.team_info, teams.team_list, teams.update_team, teams.delete_teams, teams.add_callback,
        teams.get_callbacks, teams.delete_callback, teams.disable_logging, teams.enable_logging,
        members.member_add, members.member_update, members.member_delete,
        users.new_user, users.user_info, users.update_user, users.delete_users, users.list_users,
        audit.audit_list, audit.audit_entry,
        end_users.new_end_user, end_users.end_user_info, end_users.update_end_user, end_users.delete_end_users,
        end_users.end_user_list, spend.spend_report,
        health.liveliness, health.readiness, health.model_health, config_reload.reload_config,
        introspection.plugins, introspection.sinks, metrics.metrics,
        console_router(),
    ]
    return Litestar(
        route_handlers=handlers,
        plugins=[SluicegatePlugin(gateway, reload_on_sighup=reload_on_sighup)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, DBAPIError: _database_error,
                            Exception: _unexpected},
        request_max_body_size=MAX_BODY,
        middleware=[body_deadline(settings.sluicegate_settings.request_body_timeout)],
        openapi_config=None,
        debug=debug,
        logging_config=None,
    )
