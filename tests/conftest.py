"""Shared fixtures for the core and cross-package tests under ``tests/``.

Everything here is real: databases are real SQLite files and real PostgreSQL schemas, the upstream model is a
real OpenAI-compatible HTTP server on 127.0.0.1, gateways are real Litestar apps (in-process through Litestar's
test client or uvicorn in a thread) or real ``python -m sluicegate serve`` subprocesses.

Fixtures (all documented at their definition):

- ``db_url`` — a fresh database per test, parametrised over ``sqlite`` (a temp file) and ``postgresql``
  (a fresh schema in ``postgresql://postgres@127.0.0.1:5432/test``). ``module_db_url`` is the same, one per
  module and backend, for suites that share one gateway.
- ``new_database`` — the context-manager factory behind both, for fixtures of other scopes.
- ``make_settings(**overrides)`` — :class:`sluicegate.config.Settings` from a raw config mapping.
- ``app_client`` — a Litestar ``TestClient`` (lifespan started) on a fresh database, master key
  ``MASTER_KEY``, models from ``default_model_list``.
- ``mock_upstream`` — an OpenAI-compatible upstream with knobs for errors, slowness and streaming; it
  records every request it receives.
- ``serve_app`` — run a Litestar app under uvicorn in a thread on a free loopback port.
- ``gateway_process`` — factory starting ``python -m sluicegate serve`` subprocesses, waiting for
  ``/health/liveliness`` with a deadline.
- ``query_db`` — run one SQL statement directly against a database URL (for checking what is stored).
- ``postgres_admin`` — run one SQL statement as the PostgreSQL superuser.

PostgreSQL: under ``CI=true`` it must be reachable or the test fails; locally an unreachable server skips the
PostgreSQL half with the reason. ``SLUICEGATE_TEST_POSTGRES`` overrides the admin URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sluicegate.testing.waiting import wait_until

MASTER_KEY = "sk-master-test-0123456789"
UPSTREAM_KEY = "sk-upstream-secret-do-not-forward"
POSTGRES_ADMIN_URL = os.environ.get("SLUICEGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# ------------------------------------------------------------------------------------------------ helpers
def run_async(fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Run ``fn()`` (a coroutine factory) to completion on a fresh loop in its own thread.

    Safe from sync fixtures and from inside a running event loop alike.
    """
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(fn())
        except BaseException as exc:  # re-raised in the caller
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"async helper did not finish within {timeout}s")
    if "error" in result:
        raise result["error"]
    return result.get("value")


wait_for = wait_until  # the shared helper from sluicegate.testing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on (bound and closed: connecting gets ECONNREFUSED)."""
    return free_port()


# ------------------------------------------------------------------------------------------------ databases
_postgres_state: dict[str, Any] = {}


def _postgres_reachable() -> str | None:
    """None if the PostgreSQL admin URL answers, else the reason."""
    if "reason" not in _postgres_state:
        async def probe() -> None:
            import asyncpg

            conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=3)
            await conn.close()

        try:
            run_async(probe, timeout=10)
            _postgres_state["reason"] = None
        except Exception as exc:
            _postgres_state["reason"] = f"PostgreSQL at {POSTGRES_ADMIN_URL} unreachable: {type(exc).__name__}: {exc}"
    return _postgres_state["reason"]


def require_postgres() -> None:
    """Fail under CI, skip locally, when PostgreSQL is not reachable."""
    reason = _postgres_reachable()
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)", pytrace=False)
    pytest.skip(reason)


def _admin(sql: str, *args: Any) -> Any:
    async def go() -> Any:
        import asyncpg

        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
        try:
            return await conn.execute(sql, *args) if args else await conn.execute(sql)
        finally:
            await conn.close()

    return run_async(go)


@contextlib.contextmanager
def _postgres_schema() -> Iterator[str]:
    """A fresh schema in the ``test`` database, owned by a fresh login role of the same name.

    The role's ``search_path`` is just that schema, so everything the gateway (and Alembic) creates or looks
    up lands there without any option in the URL, whatever other tests left in ``public``.
    """
    from sqlalchemy.engine import make_url

    name = "sg_t_" + uuid.uuid4().hex[:16]
    _admin(f'CREATE ROLE "{name}" LOGIN; CREATE SCHEMA "{name}" AUTHORIZATION "{name}"; '
           f'ALTER ROLE "{name}" SET search_path = "{name}"')
    admin = make_url(POSTGRES_ADMIN_URL)
    url = admin.set(drivername="postgresql+asyncpg", username=name, password=None)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
        _admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE; DROP ROLE IF EXISTS "{name}"')


@contextlib.contextmanager
def _sqlite_file(directory: Path) -> Iterator[str]:
    path = directory / f"sluicegate-{uuid.uuid4().hex[:8]}.db"
    yield f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def new_database() -> Callable[[str, Path], contextlib.AbstractContextManager[str]]:
    """``with new_database("sqlite" | "postgresql", tmp_dir) as url:`` — an empty database, removed after."""

    def factory(backend: str, directory: Path) -> contextlib.AbstractContextManager[str]:
        if backend == "postgresql":
            require_postgres()
            return _postgres_schema()
        if backend == "sqlite":
            return _sqlite_file(directory)
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    return factory


@pytest.fixture(scope="session")
def postgres_admin() -> Callable[[str], Any]:
    """``postgres_admin("SQL")`` runs a statement as the PostgreSQL superuser (fails/skips like ``db_url``)."""
    require_postgres()
    return _admin


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, new_database: Any, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for this test: a temp SQLite file, then a fresh PostgreSQL schema."""
    with new_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_url(request: pytest.FixtureRequest, new_database: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Like ``db_url`` but shared by a module's tests (tests must then use unique ids)."""
    with new_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="session")
def query_db() -> Callable[..., list[dict[str, Any]]]:
    """``query_db(url, "SELECT ...", **params)`` → rows as dicts, read straight from the database."""

    def query(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
        async def go() -> list[dict[str, Any]]:
            import sqlalchemy as sa
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = create_async_engine(url)
            try:
                async with engine.connect() as conn:
                    result = await conn.execute(sa.text(sql), params)
                    return [dict(row._mapping) for row in result]
            finally:
                await engine.dispose()

        return run_async(go)

    return query


# ------------------------------------------------------------------------------------------------ upstream
class MockUpstream:
    """An OpenAI-compatible upstream on 127.0.0.1 (aiohttp, in its own thread and loop).

    ``url`` is the ``api_base`` to configure (ends in ``/v1``). Behaviour per request comes from, in order:
    a ``"mock"`` object in the request body (it reaches us because unknown fields pass through), then a rule
    set with :meth:`on` for the upstream model name, then the default (a completion echoing the last user
    message, with usage). Knobs:

    - ``status`` (int) and ``body`` (JSON value, or ``raw`` text): answer with this error status and body;
    - ``delay`` (seconds) before the response headers — for timeouts;
    - ``chunk_delay`` (seconds) between streamed chunks;
    - ``content`` (str): the assistant's answer;
    - ``usage`` (dict): the usage to report instead of the default counts.

    Every request is recorded in ``requests`` as ``{"path", "headers", "body", "raw"}``;
    :meth:`find` looks one up by its ``x-request-id`` header (the gateway forwards its request id).
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.rules: dict[str, dict[str, Any]] = {}
        self.stored: dict[str, Any] = {}
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Any = None
        self._thread: threading.Thread | None = None

    def on(self, model: str, **behaviour: Any) -> None:
        """Set the behaviour for requests whose (upstream) ``model`` is ``model``; ``{}`` resets it."""
        if behaviour:
            self.rules[model] = behaviour
        else:
            self.rules.pop(model, None)

    def find(self, request_id: str) -> dict[str, Any] | None:
        for record in reversed(self.requests):
            if record["headers"].get("x-request-id") == request_id:
                return record
        return None

    # server ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            # Slow handlers (``delay``) may still be sleeping: cancel them instead of leaking pending tasks.
            loop.run_until_complete(self._runner.cleanup())
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="mock-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(15) or errors:
            raise RuntimeError(f"mock upstream did not start: {errors}")

    async def _start(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        # Azure's deployment URLs, same answers (the path is recorded for the test to check)
        app.router.add_post("/openai/deployments/{name}/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{name}/embeddings", self._embeddings)
        # the rest of OpenAI's API (paths, auth and multipart checked as OpenAI checks them); Azure's URLs too
        for prefix in ("/v1", "/openai/deployments/{name}", "/openai/v1", "/openai"):
            app.router.add_post(f"{prefix}/completions", self._completions)
            app.router.add_post(f"{prefix}/images/generations", self._images)
            app.router.add_post(f"{prefix}/audio/transcriptions", self._transcriptions)
            app.router.add_post(f"{prefix}/audio/speech", self._speech)
        app.router.add_post("/v1/moderations", self._moderations)
        for prefix in ("/v1", "/openai", "/openai/v1"):
            app.router.add_post(f"{prefix}/responses", self._responses)
            app.router.add_get(f"{prefix}/responses/{{id}}", self._stored_response)
            app.router.add_delete(f"{prefix}/responses/{{id}}", self._stored_response)
            app.router.add_get(f"{prefix}/responses/{{id}}/input_items", self._stored_response)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    async def _models(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({"object": "list", "data": [{"id": "upstream-model", "object": "model"}]})

    async def _embeddings(self, request: Any) -> Any:
        """OpenAI's embeddings: one vector of ``dimensions`` (default 4) per input, as floats or base64 floats
        (``encoding_format``); usage counts words (or tokens given as integers). Knobs: ``status``, ``usage``."""
        import base64
        import struct

        from aiohttp import web

        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append({"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()},
                              "body": body, "raw": raw})
        body = body if isinstance(body, dict) else {}
        knobs = dict(self.rules.get(str(body.get("model")), {}))
        if knobs.get("status"):
            return web.json_response({"error": {"message": f"mock upstream error {knobs['status']}",
                                                "type": "mock_error", "param": None, "code": "mock_code"}},
                                     status=int(knobs["status"]))
        value = body.get("input")
        single = isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int))
        inputs = [value] if single else list(value or [])
        size = int(body.get("dimensions") or 4)
        data = []
        for i, item in enumerate(inputs):
            vector = [round(0.25 * (i + 1) + 0.01 * j, 4) for j in range(size)]
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(len(x) if isinstance(x, list) else len(str(x).split()) for x in inputs)
        usage = knobs.get("usage") or {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response({"object": "list", "data": data, "model": str(body.get("model")), "usage": usage})

    # -- the rest of OpenAI's API --------------------------------------------------------------------------
    def _record(self, request: Any, body: Any, raw: bytes) -> None:
        self.requests.append({"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()},
                              "body": body, "raw": raw, "method": request.method, "query": dict(request.query)})

    @staticmethod
    def _error(status: int, message: str, param: str | None = None) -> Any:
        from aiohttp import web

        return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                            "code": None}}, status=status)

    def _unauthorised(self, request: Any) -> Any:
        """OpenAI's 401 without a bearer key (Azure: an ``api-key``); None when the request carries one."""
        bearer = request.headers.get("authorization", "")
        if (bearer.startswith("Bearer ") and len(bearer) > 7) or request.headers.get("api-key"):
            return None
        return self._error(401, "You didn't provide an API key.")

    async def _json_body(self, request: Any) -> tuple[Any, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self._record(request, body, raw)
        if (refused := self._unauthorised(request)) is not None:
            return None, refused
        if request.content_type != "application/json" or not isinstance(body, dict):
            return None, self._error(400, "We could not parse the JSON body of your request.")
        if not body.get("model") and not request.path.endswith("/moderations"):
            return None, self._error(400, "you must provide a model parameter", "model")
        knobs = dict(self.rules.get(str(body.get("model")), {}))
        if knobs.get("status"):
            return None, self._error(int(knobs["status"]), f"mock upstream error {knobs['status']}")
        return body, None

    async def _completions(self, request: Any) -> Any:
        """Legacy completions: ``echo: <prompt>`` per prompt, streamed as ``text_completion`` chunks."""
        from aiohttp import web

        body, refused = await self._json_body(request)
        if refused is not None:
            return refused
        prompt = body.get("prompt")
        if prompt is None:
            return self._error(400, "you must provide a prompt parameter", "prompt")
        prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
        texts = [f"echo: {p}" for p in prompts]
        ident = f"cmpl-mock-{uuid.uuid4().hex[:12]}"
        words = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words}
        base = {"id": ident, "object": "text_completion", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "choices": [
                {"text": t, "index": i, "logprobs": None, "finish_reason": "stop"} for i, t in enumerate(texts)],
                "usage": usage})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i, text in enumerate(texts):
            for j, word in enumerate(text.split(" ")):
                chunk = {**base, "choices": [{"text": word if j == 0 else " " + word, "index": i, "logprobs": None,
                                              "finish_reason": None}]}
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            chunk = {**base, "choices": [{"text": "", "index": i, "logprobs": None, "finish_reason": "stop"}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _responses(self, request: Any) -> Any:
        """The Responses API: an ``echo: <input>`` message, stored (``GET``/``DELETE`` /responses/{id}, and its
        ``input_items``) unless ``store`` is false; streamed as the API's events."""
        from aiohttp import web

        body, refused = await self._json_body(request)
        if refused is not None:
            return refused
        value = body.get("input")
        text = value if isinstance(value, str) else json.dumps(value)
        content = f"echo: {text}"
        ident = f"resp_mock{uuid.uuid4().hex[:16]}"
        message = {"type": "message", "id": f"msg_{uuid.uuid4().hex[:12]}", "status": "completed",
                   "role": "assistant", "content": [{"type": "output_text", "text": content, "annotations": []}]}
        usage = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 4,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13}
        answer = {"id": ident, "object": "response", "created_at": int(time.time()), "status": "completed",
                  "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
                  "model": body["model"], "output": [message], "parallel_tool_calls": True, "tool_choice": "auto",
                  "tools": [], "temperature": 1.0, "top_p": 1.0, "usage": usage, "metadata": body.get("metadata") or {},
                  "store": body.get("store", True)}
        if body.get("store", True):
            self.stored[ident] = (answer, value)
        if not body.get("stream"):
            return web.json_response(answer)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        sequence = 0

        async def send(kind: str, **data: Any) -> None:
            nonlocal sequence
            payload = {"type": kind, "sequence_number": sequence, **data}
            sequence += 1
            await response.write(f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode())

        started = {**answer, "status": "in_progress", "output": [], "usage": None}
        await send("response.created", response=started)
        await send("response.output_item.added", output_index=0, item={**message, "content": [],
                                                                        "status": "in_progress"})
        for j, word in enumerate(content.split(" ")):
            await send("response.output_text.delta", item_id=message["id"], output_index=0, content_index=0,
                       delta=word if j == 0 else " " + word, logprobs=[])
        await send("response.output_item.done", output_index=0, item=message)
        await send("response.completed", response=answer)
        await response.write_eof()
        return response

    async def _stored_response(self, request: Any) -> Any:
        from aiohttp import web

        self._record(request, None, b"")
        if (refused := self._unauthorised(request)) is not None:
            return refused
        ident = request.match_info["id"]
        if ident not in self.stored:
            return self._error(404, f"Response with id '{ident}' not found.")
        answer, value = self.stored[ident]
        if request.method == "DELETE":
            del self.stored[ident]
            return web.json_response({"id": ident, "object": "response", "deleted": True})
        if request.path.endswith("/input_items"):
            items = [{"type": "message", "id": f"msg_in{ident}", "role": "user", "status": "completed",
                      "content": [{"type": "input_text", "text": value if isinstance(value, str) else ""}]}]
            return web.json_response({"object": "list", "data": items, "first_id": items[0]["id"],
                                      "last_id": items[0]["id"], "has_more": False})
        return web.json_response(answer)

    async def _images(self, request: Any) -> Any:
        """``n`` images of ``IMAGE_BYTES`` bytes each, as ``b64_json`` (or a URL with ``response_format: url``)."""
        import base64

        from aiohttp import web

        body, refused = await self._json_body(request)
        if refused is not None:
            return refused
        if not body.get("prompt"):
            return self._error(400, "prompt is required", "prompt")
        n = int(body.get("n") or 1)
        if body.get("response_format") == "url":
            data = [{"url": f"https://images.example/{i}.png"} for i in range(n)]
        else:
            data = [{"b64_json": base64.b64encode(bytes([i]) * self.IMAGE_BYTES).decode(),
                     "revised_prompt": f"revised: {body['prompt']}"} for i in range(n)]
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if str(body["model"]).startswith("gpt-image"):
            answer["usage"] = {"input_tokens": 10, "output_tokens": 1000 * n, "total_tokens": 10 + 1000 * n,
                               "input_tokens_details": {"text_tokens": 10, "image_tokens": 0}}
        return web.json_response(answer)

    IMAGE_BYTES = 3000

    async def _transcriptions(self, request: Any) -> Any:
        """Whisper's answer to a multipart upload: a ``file`` part with a filename and a ``model`` field are
        required (a JSON body is refused as OpenAI refuses it); ``response_format`` json, text or verbose_json."""
        from aiohttp import web

        if (refused := self._unauthorised(request)) is not None:
            self._record(request, None, b"")
            return refused
        if request.content_type != "multipart/form-data":
            self._record(request, None, await request.read())
            return self._error(400, "Could not parse multipart form")
        form = await request.post()
        fields = {k: v for k, v in form.items() if not hasattr(v, "file")}
        upload = form.get("file")
        audio = upload.file.read() if hasattr(upload, "file") else None
        self._record(request, {**fields, "file": {"filename": getattr(upload, "filename", None),
                                                  "content_type": getattr(upload, "content_type", None),
                                                  "bytes": len(audio) if audio is not None else None}}, b"")
        if audio is None or not upload.filename:
            return self._error(400, "Missing required parameter: 'file'.", "file")
        if not fields.get("model"):
            return self._error(400, "you must provide a model parameter", "model")
        text = f"transcript of {upload.filename} ({len(audio)} bytes)"
        kind = fields.get("response_format") or "json"
        if kind == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if kind == "verbose_json":
            return web.json_response({"task": "transcribe", "language": "english", "duration": 12.5, "text": text,
                                      "segments": [{"id": 0, "start": 0.0, "end": 12.5, "text": text}]})
        return web.json_response({"text": text, "usage": {"type": "duration", "seconds": 3}})

    SPEECH_CHUNK = 1024

    async def _speech(self, request: Any) -> Any:
        """``audio/mpeg`` bytes streamed in ``SPEECH_CHUNK`` pieces, one per 10 characters of input; ``chunk_delay``
        knob (the test of relaying as it arrives)."""
        from aiohttp import web

        body, refused = await self._json_body(request)
        if refused is not None:
            return refused
        if not body.get("input") or not body.get("voice"):
            return self._error(400, "input and voice are required", "input" if not body.get("input") else "voice")
        knobs = dict(self.rules.get(str(body.get("model")), {}))
        kind = {"mp3": "audio/mpeg", "wav": "audio/wav", "opus": "audio/ogg"}.get(body.get("response_format")
                                                                                 or "mp3", "audio/mpeg")
        response = web.StreamResponse(headers={"content-type": kind})
        await response.prepare(request)
        for i in range(-(-len(body["input"]) // 10)):
            await response.write(bytes([i % 256]) * self.SPEECH_CHUNK)
            if knobs.get("chunk_delay"):
                await asyncio.sleep(float(knobs["chunk_delay"]))  # deliberate: simulated gap between chunks
        await response.write_eof()
        return response

    async def _moderations(self, request: Any) -> Any:
        from aiohttp import web

        body, refused = await self._json_body(request)
        if refused is not None:
            return refused
        value = body.get("input")
        inputs = value if isinstance(value, list) else [value]
        results = [{"flagged": "kill" in str(x), "categories": {"violence": "kill" in str(x)},
                    "category_scores": {"violence": 0.9 if "kill" in str(x) else 0.01}} for x in inputs]
        return web.json_response({"id": f"modr-{uuid.uuid4().hex[:8]}", "model": body.get("model")
                                  or "omni-moderation-latest", "results": results})

    async def _chat(self, request: Any) -> Any:
        from aiohttp import web

        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append({"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()},
                              "body": body, "raw": raw})
        body = body if isinstance(body, dict) else {}
        knobs = dict(self.rules.get(str(body.get("model")), {}))
        if isinstance(body.get("mock"), dict):
            knobs.update(body["mock"])
        if knobs.get("delay"):
            await asyncio.sleep(float(knobs["delay"]))  # deliberate: the mock upstream's simulated latency
        if knobs.get("status"):
            if "raw" in knobs:
                return web.Response(status=int(knobs["status"]), text=str(knobs["raw"]), content_type="text/plain")
            error = knobs.get("body", {"error": {"message": f"mock upstream error {knobs['status']}",
                                                 "type": "mock_error", "param": None, "code": "mock_code"}})
            return web.json_response(error, status=int(knobs["status"]))
        messages = body.get("messages") or [{}]
        last = messages[-1].get("content") if isinstance(messages[-1], dict) else None
        content = str(knobs.get("content", f"echo: {last}"))
        model = str(body.get("model"))
        ident = f"chatcmpl-mock-{uuid.uuid4().hex[:12]}"
        usage = knobs.get("usage") or {"prompt_tokens": 7, "completion_tokens": len(content.split()),
                                       "total_tokens": 7 + len(content.split())}
        if not body.get("stream"):
            return web.json_response({
                "id": ident, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": usage})
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        base = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        words = content.split(" ")
        chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None}]}]
        chunks += [{**base, "choices": [{"index": 0, "delta": {"content": w if i == 0 else " " + w},
                                         "finish_reason": None}]} for i, w in enumerate(words)]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": usage})
        for chunk in chunks:
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if knobs.get("chunk_delay"):
                await asyncio.sleep(float(knobs["chunk_delay"]))  # deliberate: simulated gap between chunks
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[MockUpstream]:
    """A real OpenAI-compatible upstream on 127.0.0.1 for the whole session (see :class:`MockUpstream`)."""
    upstream = MockUpstream()
    upstream.start()
    try:
        yield upstream
    finally:
        upstream.stop()


# ------------------------------------------------------------------------------------------------ settings
def default_model_list(upstream_url: str | None = None) -> list[dict[str, Any]]:
    """Models every suite can rely on.

    ``gpt-mock``: offline ``mock_response``. With an upstream: ``gpt-up`` (upstream model ``up-model``,
    timeout 5 s), ``gpt-slow`` (``slow-model``, timeout 0.5 s), ``gpt-down`` (nothing listens at its base).
    """
    models: list[dict[str, Any]] = [
        {"model_name": "gpt-mock", "litellm_params": {"model": "openai/mock-model",
                                                      "mock_response": "Hello from the offline model"}}]
    if upstream_url:
        models += [
            {"model_name": "gpt-up", "litellm_params": {"model": "openai/up-model", "api_base": upstream_url,
                                                        "api_key": UPSTREAM_KEY, "timeout": 5}},
            {"model_name": "gpt-slow", "litellm_params": {"model": "openai/slow-model", "api_base": upstream_url,
                                                          "api_key": UPSTREAM_KEY, "timeout": 0.5}},
            {"model_name": "gpt-down", "litellm_params": {
                "model": "openai/down-model", "api_base": f"http://127.0.0.1:{closed_port()}/v1", "timeout": 5}},
        ]
    return models


def _make_config(*, upstream: str | None = None, database_url: str | None = None,
                 master_key: str | None = MASTER_KEY, model_list: list[dict[str, Any]] | None = None,
                 **sections: Any) -> dict[str, Any]:
    general: dict[str, Any] = {}
    if master_key is not None:
        general["master_key"] = master_key
    if database_url is not None:
        general["database_url"] = database_url
    general.update(sections.pop("general_settings", {}) or {})
    config: dict[str, Any] = {"model_list": model_list if model_list is not None else default_model_list(upstream),
                              "general_settings": general}
    config.update(sections)
    return config


@pytest.fixture(scope="session")
def master_key() -> str:
    """The master key every helper here configures (``general_settings.master_key``)."""
    return MASTER_KEY


@pytest.fixture(scope="session")
def upstream_key() -> str:
    """The ``api_key`` of the upstream models in :func:`default_model_list` (what the upstream must see)."""
    return UPSTREAM_KEY


@pytest.fixture(scope="session")
def make_config() -> Callable[..., dict[str, Any]]:
    """``make_config(upstream=None, database_url=None, master_key=MASTER_KEY, model_list=None, **sections)``.

    A raw config.yaml mapping. Without ``model_list`` the models are :func:`default_model_list` (with the
    upstream models when ``upstream`` is a base URL). Other keyword sections (``litellm_settings=...``)
    replace whole sections; a ``general_settings`` dict is merged over the master key and database URL.
    """
    return _make_config


@pytest.fixture(scope="session")
def make_settings(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """``make_settings(**overrides)`` → ``Settings``, through ``parse_settings`` exactly like a config.yaml.

    Takes the keywords of ``make_config``. Without ``database_url`` a fresh SQLite file is used. The config is also
    written to a file, its ``source``.
    """
    from sluicegate.config import parse_settings

    directory = tmp_path_factory.mktemp("settings")

    def build(**overrides: Any) -> Any:
        overrides.setdefault("database_url", f"sqlite+aiosqlite:///{directory / f'db-{uuid.uuid4().hex[:8]}.db'}")
        config = _make_config(**overrides)
        source = directory / f"config-{uuid.uuid4().hex[:8]}.yaml"  # what POST /config/reload reads again
        source.write_text(yaml.safe_dump(config))
        return parse_settings(config, source=str(source))

    return build


@pytest.fixture(scope="session")
def write_config(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``write_config(raw_mapping_or_yaml_text)`` → path of a new config file holding it."""
    directory = tmp_path_factory.mktemp("configs")

    def write(content: Any) -> Path:
        path = directory / f"config-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


# ------------------------------------------------------------------------------------------------ apps
@pytest.fixture
def app_client(db_url: str, make_settings: Callable[..., Any], mock_upstream: MockUpstream) -> Iterator[Any]:
    """A Litestar ``TestClient`` on a fresh database (both backends), lifespan started.

    Master key ``MASTER_KEY``; models from :func:`default_model_list` against ``mock_upstream``. The
    client's ``settings`` attribute holds the Settings used.
    """
    from litestar.testing import TestClient
    from sluicegate.app import create_app

    settings = make_settings(database_url=db_url, upstream=mock_upstream.url)
    with TestClient(create_app(settings), timeout=30) as client:
        client.settings = settings  # type: ignore[attr-defined]
        yield client


class ServedApp:
    """A Litestar app under uvicorn in a thread. ``url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False,
                                                   timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name=f"uvicorn-{self.port}", daemon=True)

    def start(self, timeout: float = 30.0) -> ServedApp:
        self._thread.start()
        wait_for(lambda: self.server.started or not self._thread.is_alive(), timeout=timeout,
                 what=f"uvicorn on {self.url} to start")
        if not self.server.started:
            raise RuntimeError(f"uvicorn on {self.url} exited during start-up")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)
        self._sock.close()


def _serve_app() -> Iterator[Callable[[Any], ServedApp]]:
    served: list[ServedApp] = []

    def start(app: Any) -> ServedApp:
        server = ServedApp(app).start()
        served.append(server)
        return server

    yield start
    for server in reversed(served):
        server.stop()


@pytest.fixture
def serve_app() -> Iterator[Callable[[Any], ServedApp]]:
    """``serve_app(litestar_app)`` → a started :class:`ServedApp` (stopped after the test)."""
    yield from _serve_app()


@pytest.fixture(scope="module")
def module_serve_app() -> Iterator[Callable[[Any], ServedApp]]:
    """``serve_app`` whose servers live until the end of the module."""
    yield from _serve_app()


# ------------------------------------------------------------------------------------------------ processes
class GatewayProcess:
    """A ``python -m sluicegate serve`` subprocess. Output goes to files (``stdout``/``stderr`` properties)."""

    def __init__(self, config: Path, *, port: int | None = None, workers: int = 1, env: dict[str, str] | None = None,
                 log_dir: Path, cwd: Path | None = None, delivery: str | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = config
        tag = uuid.uuid4().hex[:6]
        self._out = log_dir / f"gateway-{self.port}-{tag}.out"
        self._err = log_dir / f"gateway-{self.port}-{tag}.err"
        # DATABASE_URL overrides the config; only an explicit ``env`` may set it for the child.
        full_env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sluicegate", "serve", "--config", str(config), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", str(workers), "--log-level", "warning",
                 *(["--delivery", delivery] if delivery else [])],
                stdout=out, stderr=err, env=full_env, cwd=str(cwd or log_dir))

    @property
    def stdout(self) -> str:
        return self._out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> GatewayProcess:
        import httpx

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode} before it was ready:\n"
                                     f"{self.stdout}\n{self.stderr}")
            try:
                return httpx.get(f"{self.url}/health/liveliness", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=timeout, interval=0.1, what=f"{self.url}/health/liveliness")
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _gateway_processes(log_dir: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(config: Path, *, wait: bool = True, **kwargs: Any) -> GatewayProcess:
        process = GatewayProcess(config, log_dir=log_dir, **kwargs)
        started.append(process)
        return process.wait_ready() if wait else process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """``gateway_process(config_path, wait=True, workers=1, env=None, delivery=None)`` → a running
    :class:`GatewayProcess` (``delivery``: ``--delivery process|inline``; the CLI's default when None).

    With ``wait=False`` the process is started but not awaited: call ``.wait_ready()`` later (lets start-up
    overlap with other work). Every process is terminated after the test.
    """
    yield from _gateway_processes(tmp_path)


@pytest.fixture(scope="module")
def module_gateway_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., GatewayProcess]]:
    """``gateway_process`` whose processes live until the end of the module."""
    yield from _gateway_processes(tmp_path_factory.mktemp("gateway"))
