"""Finding #2: a destination that answers an error with the request it received must not put the sink's secrets
into ``/key/health``, ``/-/sinks``, ``/metrics`` or a log line, in any form the sink sent them.

Every bundled sink (langfuse, otel over http/protobuf, http/json and grpc, datadog, gcs_bucket with its storage API
and its token endpoint) is pointed at a real loopback destination that refuses everything and quotes the request
back: raw text, JSON-escaped inside an error object, or base64. The texts the gateway then shows are searched for
each secret raw, JSON-escaped and percent-encoded, and inside every base64 run (decoded at every alignment). The
negative control of each case: the same search finds the secrets in what the destination answered.

The unit tests at the end pin the :class:`~sluicegate.sinks.scrub.Scrubber` itself.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import secrets
import threading
import time
import urllib.parse
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sluicegate.sinks.base import MASK
from sluicegate.sinks.scrub import ERROR_KINDS, Scrubber, error_kind_of, public_error_kind
from sluicegate.sinks.vars import decode_vars
from sluicegate_langfuse_sink.sink import LangfuseSink, LangfuseVars
from sluicegate_otel_sink.sink import OtelSink

STYLES = ("raw", "json", "base64")
_PLAIN_HEADERS = frozenset({"host", "content-length", "content-type", "content-encoding", "user-agent", "accept",
                            "accept-encoding", "connection", "te", "x-langfuse-ingestion-version"})


# -- the echoing destination ------------------------------------------------------------------------------------
def _dump(first_line: str, headers: list[tuple[str, str]], body: bytes) -> str:
    """The request as a debugging endpoint writes it back, credential-bearing headers first (so they fall inside
    any excerpt a sink may quote), then the request line, the other headers and the body."""
    def credential(name: str) -> bool:
        name = name.lower()
        return name not in _PLAIN_HEADERS and any(word in name for word in ("auth", "key", "token"))

    first = [f"{k}: {v}" for k, v in headers if credential(k)]
    rest = [f"{k}: {v}" for k, v in headers if not credential(k)]
    return "\n".join([*first, first_line, *rest, "", body.decode("latin-1")])


def _render(style: str, status: int, dump: str, headers: list[tuple[str, str]]) -> tuple[str, str]:
    """``(content type, body)`` of an answer quoting ``dump`` in ``style`` (errors shaped as Google APIs shape
    them, so the google libraries read the message)."""
    if style == "raw":
        return "text/plain", dump
    if style == "json":
        return "application/json", json.dumps({"error": {"code": status, "message": dump,
                                                         "request": {"headers": dict(headers)}}})
    return "application/json", json.dumps({"error": {"code": status,
                                                     "message": base64.b64encode(dump.encode("latin-1")).decode()}})


class EchoDestination:
    """An HTTP server on 127.0.0.1 (own thread and loop) answering ``status`` with the request quoted back.

    ``token``: ``POST /token`` issues this OAuth access token instead (a service account's token endpoint).
    """

    def __init__(self, style: str, status: int, *, token: str | None = None) -> None:
        self.style, self.status, self.token = style, status, token
        self.requests: list[str] = []  # every request as dumped
        self.answers: list[str] = []  # every answer body sent
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = list(request.headers.items())
        dump = _dump(f"{request.method} {request.path_qs}", headers, body)
        if self.token is not None and request.path == "/token":
            answer = json.dumps({"access_token": self.token, "expires_in": 3600, "token_type": "Bearer"})
            content_type, status = "application/json", 200
        else:
            content_type, answer = _render(self.style, self.status, dump, headers)
            status = self.status
        with self._lock:
            self.requests.append(dump)
            self.answers.append(answer)
        return web.Response(status=status, text=answer, content_type=content_type)

    def __enter__(self) -> EchoDestination:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="echo-destination", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the echo destination did not start within 10 s"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class EchoGrpcDestination:
    """An OTLP gRPC endpoint on 127.0.0.1 refusing every export (UNAUTHENTICATED), its metadata quoted back in
    the status details."""

    def __init__(self, style: str) -> None:
        self.style = style
        self.answers: list[str] = []
        self.port = 0
        self._server: grpc.Server | None = None

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        headers = [(k, v) for k, v in context.invocation_metadata() if isinstance(v, str)]
        dump = _dump("POST /opentelemetry.proto.collector.trace.v1.TraceService/Export", headers, b"")
        _, details = _render(self.style, 401, dump, headers)
        self.answers.append(details)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, details)
        return b""  # not reached: abort raises

    def __enter__(self) -> EchoGrpcDestination:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="echo-grpc"))
        handler = grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService", {
            "Export": grpc.unary_unary_rpc_method_handler(self._export)})
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.stop(grace=None)


# -- looking for secrets -------------------------------------------------------------------------------------
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}")


def _decoded_runs(text: str) -> list[str]:
    """Every base64 run of ``text`` decoded at each of its four alignments (standard and URL-safe alphabet)."""
    found = []
    for run in _BASE64_RUN.findall(text):
        run = run.rstrip("=").translate(str.maketrans("-_", "+/"))
        for start in range(4):
            piece = run[start:]
            piece = piece[:len(piece) - len(piece) % 4]
            try:
                found.append(base64.b64decode(piece, validate=True).decode("latin-1"))
            except (binascii.Error, ValueError):
                continue
    return found


def _strings(value: Any) -> list[str]:
    """Every string in a decoded JSON answer (searched as the caller reads them, one JSON escape level off)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def leaks(texts: list[str], secret_values: list[str]) -> list[tuple[str, str]]:
    """``(secret, form)`` for each secret found in ``texts``: raw, JSON-escaped, percent-encoded or base64."""
    found = []
    for text in texts:
        decoded = _decoded_runs(text)
        for secret in secret_values:
            forms = {"raw": secret, "json": json.dumps(secret)[1:-1],
                     "percent": urllib.parse.quote(secret, safe="")}
            for name, form in forms.items():
                if form in text:
                    found.append((secret, name))
            if any(secret in d for d in decoded):
                found.append((secret, "base64"))
    return found


# -- the cases -------------------------------------------------------------------------------------------------
def _token(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


class Case:
    """One sink pointed at an echoing destination: its team vars, the env for the same sink as a global one (the
    admin's ``/key/health`` probes those), its secrets and the error kind a key holder should see."""

    def __init__(self, name: str, callback_name: str, kind: str) -> None:
        self.name, self.callback_name, self.kind = name, callback_name, kind
        self.team_vars: dict[str, Any] = {}
        self.env: dict[str, str] = {}
        self.secret_values: list[str] = []


def _service_account(tmp_path: Path, token_uri: str) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path / f"sa-{secrets.token_hex(4)}.json"
    path.write_text(json.dumps({"type": "service_account", "project_id": "echo",
                                "private_key_id": secrets.token_hex(20), "private_key": pem, "client_email": "echo@echo.iam.gserviceaccount.com",
                                "client_id": "1234", "token_uri": token_uri}))
    return path


def build_case(name: str, url: str, grpc_port: int, tmp_path: Path) -> Case:
    if name == "langfuse":
        case = Case(name, "langfuse", "auth")
        public, secret = "pk-lf-echo-public", _token("sk-lf-echo-")
        case.team_vars = {"langfuse_public_key": public, "langfuse_secret_key": secret, "langfuse_host": url}
        case.env = {"LANGFUSE_PUBLIC_KEY": public, "LANGFUSE_SECRET_KEY": secret, "LANGFUSE_HOST": url}
        case.secret_values = [secret, base64.b64encode(f"{public}:{secret}".encode()).decode()]
        return case
    if name.startswith("otel"):
        protocol = {"otel-protobuf": "http/protobuf", "otel-json": "http/json", "otel-grpc": "grpc"}[name]
        case = Case(name, "otel", "auth" if protocol == "grpc" else "rejected")
        # A quote, a backslash and a slash (JSON-escaped differently), a comma and a percent sign (percent-encoded
        # in otel_headers, sent decoded).
        bearer = _token('ot/"q\\')
        api_key = _token("xk,%=")
        quoted = {name: urllib.parse.quote(value, safe="") for name, value in (("b", bearer), ("k", api_key))}
        headers = f"authorization=Bearer%20{quoted['b']},x-api-key={quoted['k']}"
        endpoint = f"127.0.0.1:{grpc_port}" if protocol == "grpc" else f"{url}/v1/traces"
        case.team_vars = {"otel_endpoint": endpoint, "otel_protocol": protocol, "otel_headers": headers}
        case.env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol,
                    "OTEL_EXPORTER_OTLP_TRACES_HEADERS": headers}
        case.secret_values = [bearer, f"Bearer {bearer}", api_key, headers]
        return case
    if name == "datadog":
        case = Case(name, "datadog", "auth")
        api_key = _token("dd0123456789abcdef")
        port = urllib.parse.urlsplit(url).port
        case.team_vars = {"dd_api_key": api_key, "dd_agent_host": "127.0.0.1", "dd_agent_port": port}
        case.env = {"DD_API_KEY": api_key, "LITELLM_DD_AGENT_HOST": "127.0.0.1", "LITELLM_DD_AGENT_PORT": str(port)}
        case.secret_values = [api_key]
        return case
    assert name in ("gcs-storage", "gcs-token")
    case = Case(name, "gcs_bucket", "auth")
    key_file = _service_account(tmp_path, f"{url}/token")
    case.team_vars = {"gcs_bucket_name": "echo-bucket/logs", "gcs_path_service_account": str(key_file)}
    case.env = {"GCS_BUCKET_NAME": "echo-bucket/logs", "GCS_PATH_SERVICE_ACCOUNT": str(key_file),
                "STORAGE_EMULATOR_HOST": url}
    case.secret_values = [str(key_file)]
    return case


CASES = ("langfuse", "otel-protobuf", "otel-json", "otel-grpc", "datadog", "gcs-storage", "gcs-token")


async def _until(condition, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)  # deliberate: polls a condition under a deadline


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", CASES)
async def test_an_echoing_destination_gets_no_secret_into_health_sinks_metrics_or_logs(
        name, style, tmp_path, make_config, start, register_secret, monkeypatch, caplog):
    access_token = _token("ya29.echo-") if name == "gcs-storage" else None
    for variable in ("SLUICEGATE_LOAD_PLUGINS", "SLUICEGATE_DISABLE_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)
    caplog.set_level(logging.DEBUG, logger="sluicegate")
    caplog.set_level(logging.INFO)
    status = {"langfuse": 401, "datadog": 403}.get(name, 400 if name.startswith("otel") else 403)
    with EchoDestination(style, status, token=access_token) as http, EchoGrpcDestination(style) as rpc:
        case = build_case(name, http.url, rpc.port, tmp_path)
        if access_token is not None:
            case.secret_values.append(access_token)
        for value in case.secret_values:
            if len(value) >= 8:
                register_secret(value)
        for variable, value in case.env.items():
            monkeypatch.setenv(variable, value)
        cfg = make_config(
            litellm={"callbacks": [case.callback_name],
                     "default_team_settings": [{"team_id": "echo", "success_callback": [case.callback_name],
                                                "callback_vars": case.team_vars}]},
            delivery={"spool": False, "shutdown_grace": 1.0, "health_timeout": 8.0})
        cfg["sluicegate_settings"]["key_health_per_minute"] = 1000
        async with start(cfg) as gw:
            key = await gw.new_key(team_id="echo")
            holder = (await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key}"})).json()
            admin = (await gw.admin("POST", "/key/health")).json()
            assert (await gw.chat(key, "hello")).status_code == 200

            async def failed() -> Any:
                rows = (await gw.admin("GET", "/-/sinks")).json()["sinks"]
                return [r for r in rows if r["callback_name"] == case.callback_name and r["last_error"]]

            rows = await _until(failed, f"a failed send of {name}")
            sinks = (await gw.admin("GET", "/-/sinks")).json()
            metrics = (await gw.admin("GET", "/metrics")).text
        # The grant's signed assertion is a credential too (exchangeable for tokens until it expires).
        for dump in http.requests:
            case.secret_values += re.findall(r"assertion=([A-Za-z0-9._-]+)", dump)
    answers = http.answers + rpc.answers
    # Negative control: the destination did quote the secrets back, and the search finds them there.
    assert leaks(answers, case.secret_values), f"the {style} echo carried no secret: the test proves nothing"
    texts = {"key holder /key/health": _strings(holder), "admin /key/health": _strings(admin),
             "/-/sinks": _strings(sinks), "/metrics": [metrics],
             "log lines": [r.getMessage() for r in caplog.records] + [caplog.text]}
    found = {where: leaks(strings, case.secret_values) for where, strings in texts.items()}
    assert not any(found.values()), {where: hits for where, hits in found.items() if hits}

    # A key holder sees the sink and the kind of failure, not the destination's (or the sink's) words.
    assert holder["key"] == "unhealthy"
    assert holder["logging_callbacks"]["details"] == f"{case.callback_name}: {case.kind}"
    # An admin sees the details, scrubbed, and the last send error, where the echo was masked.
    assert admin["logging_callbacks"]["status"] == "unhealthy"
    assert case.callback_name in admin["logging_callbacks"]["details"]
    last_error = rows[0]["last_error"]
    assert "\n" not in last_error and len(last_error) <= 500
    if name != "gcs-token":  # the token endpoint's answer is never quoted at all (it would hold the assertion)
        assert MASK in last_error, last_error


# -- the scrubber ----------------------------------------------------------------------------------------------
SECRET = 'Sk-"quoted"\\back/slash+plus=é-0123456789'


def test_every_form_of_a_secret_is_masked() -> None:
    scrub = Scrubber([SECRET])
    raw = SECRET.encode()
    forms = {
        "raw": SECRET,
        "json": json.dumps(SECRET)[1:-1],
        "json unicode": json.dumps(SECRET, ensure_ascii=False)[1:-1],
        "json twice": json.dumps(json.dumps(SECRET))[1:-1],
        "percent": urllib.parse.quote(SECRET, safe=""),
        "percent lower": re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), urllib.parse.quote(SECRET, safe="")),
        "form": urllib.parse.quote_plus(SECRET),
        "repr": repr(SECRET)[1:-1],
    }
    for prefix in (b"", b"a", b"ab", b"abc"):
        for name, encode in (("base64", base64.b64encode), ("urlsafe", base64.urlsafe_b64encode)):
            forms[f"{name} after {len(prefix)}"] = encode(prefix + raw + b"\n").decode()
    for name, form in forms.items():
        text = f"the destination said: {form} (end)"
        scrubbed = scrub(text)
        assert MASK in scrubbed and form not in scrubbed, (name, scrubbed)
        assert not leaks([scrubbed], [SECRET]), (name, scrubbed)


def test_credentials_no_list_can_know_are_masked_too() -> None:
    scrub = Scrubber([])
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJlLWJ5dGVz"
    cases = {
        "https://alice:pa55word@collector.example/v1": "pa55word",
        "GET /v1/traces?api_key=q1w2e3r4t5&x=1": "q1w2e3r4t5",
        "POST /x?sig=abcdef123456 HTTP/1.1": "abcdef123456",
        "Authorization: Basic dXNlcjpwYXNzd29yZA==": "dXNlcjpwYXNzd29yZA",
        '{"headers": {"authorization": "Bearer tok-9f8e7d6c5b"}}': "tok-9f8e7d6c5b",
        '{\\"dd-api-key\\": \\"0a1b2c3d4e5f\\"}': "0a1b2c3d4e5f",
        "x-api-key: plainkey42": "plainkey42",
        "upstream said: bearer abc.def-123456": "abc.def-123456",
        f"grant_type=jwt-bearer&assertion={jwt}": jwt,
        "key: -----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\\n-----END PRIVATE KEY-----": "MIIEvQIBADANBg",
    }
    for text, secret in cases.items():
        assert secret in text  # negative control
        assert secret not in scrub(text), text


def test_ordinary_words_are_left_alone() -> None:
    scrub = Scrubber(["innocent-secret-1"])
    for text in ("HTTP 401 Unauthorized: Basic authentication failed", "total_tokens: 12, prompt_tokens: 3",
                 "langfuse at http://127.0.0.1:3000: credentials rejected (HTTP 401)",
                 "otel: grpc 127.0.0.1:4317 answered gRPC UNAUTHENTICATED"):
        assert scrub(text) == text


def test_an_excerpt_is_short_one_line_and_masks_a_secret_across_its_end() -> None:
    scrub = Scrubber([SECRET])
    body = ("x" * 190 + SECRET + "\r\nINFO forged log line\n" + "y" * 10_000).encode()
    excerpt = scrub.excerpt(body)
    assert len(excerpt) <= 200 and "\n" not in excerpt and "\r" not in excerpt
    assert SECRET[:8] not in excerpt
    # negative control: a plain cut keeps the secret's start
    assert SECRET[:8] in body[:200].decode()


def test_sinks_declare_what_they_send() -> None:
    langfuse = LangfuseSink(decode_vars(LangfuseVars, {"langfuse_public_key": "pk-1",
                                                       "langfuse_secret_key": "sk-abcd1234"}))
    assert set(langfuse.secret_forms()) == {"sk-abcd1234", base64.b64encode(b"pk-1:sk-abcd1234").decode()}
    otel = OtelSink(decode_vars(OtelSink.Vars, {"otel_endpoint": "http://127.0.0.1:4318/v1/traces?token=t0k3n-q",
                                                "otel_headers": "authorization=Bearer%20a%2Cb-token,x-k=v%3Dw"}))
    assert {"authorization=Bearer%20a%2Cb-token,x-k=v%3Dw", "Bearer a,b-token", "a,b-token", "v=w",
            "t0k3n-q"} <= set(otel.secret_forms())


def test_error_kinds_for_key_holders() -> None:
    assert {public_error_kind(k) for k in ("auth", "permission", "connection", "timeout", "http_status",
                                           "unexpected", None, "something new")} <= set(ERROR_KINDS)
    assert public_error_kind("permission") == "auth" and public_error_kind("connection") == "unreachable"
    assert public_error_kind("http_status") == "rejected" and public_error_kind(None) == "protocol"

    class Refused(Exception):
        status_code = 400

    assert error_kind_of(TimeoutError()) == "timeout"
    assert error_kind_of(ConnectionRefusedError()) == "unreachable"
    assert error_kind_of(Refused("no")) == "rejected"
    assert error_kind_of(ValueError("odd")) == "protocol"
