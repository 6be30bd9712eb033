"""Abuse: property-based fuzzing of every route (hypothesis), slow clients, and the log scan's own control.

The app serves no OpenAPI schema (``openapi_config=None``), so the routes of ``sluicegate.app.create_app`` are
listed here and their JSON bodies, query strings and path parameters are generated directly. Hypothesis runs
derandomized with a fixed example count, so CI sees the same cases every run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

UPSTREAM_KEY = "sk-upstream-fuzz-" + "7" * 16
CALLBACK_SECRET = "acme-secret-fuzz-5d1e0c3b"
ERROR_FIELDS = {"message", "type", "param", "code"}
MASTER = "sk-master-pipeline-test"  # tests/pipeline/conftest.py's master key (checked against the gateway below)

# (method, path template) of every route in sluicegate/app.py; {team}/{name} are fuzzed path parameters ({name}
# also stands for a model name)
ROUTES = [
    ("POST", "/v1/chat/completions"), ("POST", "/chat/completions"), ("GET", "/v1/models"), ("GET", "/models"),
    ("POST", "/key/generate"), ("POST", "/key/update"), ("GET", "/key/info"), ("POST", "/key/delete"),
    ("GET", "/key/list"), ("POST", "/key/health"),
    ("POST", "/team/new"), ("GET", "/team/info"), ("GET", "/team/list"), ("POST", "/team/update"),
    ("POST", "/team/delete"),
    ("POST", "/team/{team}/callback"), ("GET", "/team/{team}/callback"), ("DELETE", "/team/{team}/callback/{name}"),
    ("POST", "/team/{team}/disable_logging"), ("POST", "/team/{team}/enable_logging"),
    ("GET", "/health/liveliness"), ("GET", "/health/liveness"), ("GET", "/health/readiness"),
    ("GET", "/-/plugins"), ("GET", "/-/sinks"), ("GET", "/metrics"),
    ("POST", "/v1/embeddings"), ("POST", "/embeddings"), ("GET", "/v1/models/{name}"), ("GET", "/models/{name}"),
    ("GET", "/model/info"), ("GET", "/v1/model/info"), ("GET", "/health"), ("POST", "/config/reload"),
    *((method, f"/{prefix}/{action}") for prefix in ("end_user", "customer")
      for method, action in (("POST", "new"), ("GET", "info"), ("POST", "update"), ("POST", "delete"),
                             ("GET", "list"))),
    ("GET", "/spend/report"),
    ("POST", "/v1/messages"), ("POST", "/messages"), ("POST", "/v1/messages/count_tokens"),
    ("POST", "/messages/count_tokens"),
    ("POST", "/team/member_add"), ("POST", "/team/member_update"), ("POST", "/team/member_delete"),
    ("POST", "/user/new"), ("GET", "/user/info"), ("POST", "/user/update"), ("POST", "/user/delete"),
    ("GET", "/user/list"), ("GET", "/audit"), ("GET", "/audit/{name}"),
    # the console: HTML forms behind a session cookie and a CSRF token; fuzzed for the same never-500 rule
    ("GET", "/ui/login"), ("POST", "/ui/login"), ("POST", "/ui/logout"), ("GET", "/ui"), ("GET", "/ui/teams"),
    ("POST", "/ui/teams"), ("GET", "/ui/teams/{team}"), ("POST", "/ui/teams/{team}/settings"),
    ("POST", "/ui/teams/{team}/logging"), ("POST", "/ui/teams/{team}/delete"), ("GET", "/ui/teams/{team}/sinks/new"),
    ("POST", "/ui/teams/{team}/sinks"), ("POST", "/ui/teams/{team}/sinks/{name}/delete"), ("GET", "/ui/keys"),
    ("POST", "/ui/keys"), ("POST", "/ui/keys/{name}/rotate"), ("POST", "/ui/keys/{name}/block"),
    ("POST", "/ui/keys/{name}/delete"), ("GET", "/ui/delivery"), ("GET", "/ui/plugins"), ("GET", "/ui/{name}"),
    ("GET", "/ui/audit"), ("GET", "/ui/spend"),
    ("GET", "/ui/static/{name}"),
    ("GET", "/model/info"), ("GET", "/v1/model/info"), ("GET", "/health"),
    ("POST", "/v1/completions"), ("POST", "/completions"), ("POST", "/v1/responses"), ("POST", "/responses"),
    ("GET", "/v1/responses/{name}"), ("GET", "/responses/{name}"), ("DELETE", "/v1/responses/{name}"),
    ("DELETE", "/responses/{name}"), ("GET", "/v1/responses/{name}/input_items"),
    ("GET", "/responses/{name}/input_items"),
    ("POST", "/v1/images/generations"), ("POST", "/images/generations"), ("POST", "/v1/audio/transcriptions"),
    ("POST", "/audio/transcriptions"), ("POST", "/v1/audio/speech"), ("POST", "/audio/speech"),
    ("POST", "/v1/moderations"), ("POST", "/moderations"),
]
ANTHROPIC_ROUTES = ("/v1/messages", "/messages", "/v1/messages/count_tokens", "/messages/count_tokens")
"""Routes that answer errors in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
FIELDS = ["model", "messages", "stream", "cache", "key", "keys", "key_aliases", "team_id", "team_ids", "team_alias",
          "max_budget", "soft_budget", "budget_duration", "spend", "user_id", "user_ids", "alias", "user",
          "key_alias", "models", "metadata", "duration", "blocked", "callback_name", "callback_type",
          "callback_vars", "logging", "url", "api_token", "role", "content", "max_tokens", "temperature",
          "user_id", "user_ids", "user_email", "user_role", "member", "teams", "rpm_limit", "max_budget", "system",
          "tools", "tool_choice", "litellm_metadata", "type", "text", "prompt", "input", "instructions", "voice", "n",
          "previous_response_id", "encoding_format"]

text = st.text(max_size=40)
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
           | text | st.sampled_from(["mock", "acme", "t-fuzz", "sk-x", "30d", "-1s", "success", "os.environ/HOME"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(FIELDS) | text, inner, max_size=4), max_leaves=12)
bodies = (st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(lambda d: json.dumps(d).encode())
          | json_values.map(lambda v: json.dumps(v).encode())
          | st.binary(max_size=64)
          | st.just(b"[" * 5000))
queries = st.dictionaries(st.sampled_from(["key", "team_id", "page", "size", "x", "user_id", "page_size", "role",
                                           "end_user_id", "start_date", "end_date", "group_by", "format"])
                          | text, text, max_size=3)
path_params = st.sampled_from(["t-fuzz", "cfg-team", "nope"]) | st.text(min_size=1, max_size=30)


def check_response(response: httpx.Response, secrets: list[str]) -> None:
    where = f"{response.request.method} {response.request.url} -> {response.status_code}"
    assert response.status_code < 500, f"{where}: {response.text[:300]}"
    raw = response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    assert "Traceback" not in raw and 'File "' not in raw, where
    for secret in secrets:
        assert secret not in raw, f"{where} carries a secret"
    if response.status_code >= 400 and response.request.url.path in ANTHROPIC_ROUTES:
        body = response.json()
        assert body["type"] == "error" and {"type", "message"} <= set(body["error"]), f"{where}: {response.text[:300]}"
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    elif (response.status_code >= 400 and response.request.url.path.startswith("/ui")
          and not response.headers["content-type"].startswith("application/json")):
        # the console answers people, in HTML pages (its refusals are the API's texts, escaped); a missing static
        # file is the JSON 404 of any unknown route
        assert response.headers["content-type"].startswith("text/html"), f"{where}: {response.text[:300]}"
    elif response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and ERROR_FIELDS <= set(body["error"]), f"{where}: {response.text[:300]}"
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def test_fuzzed_bodies_queries_and_path_params_never_500_leak_or_break_the_error_shape(
        receiver, make_config, start, vars_for, register_secret):
    register_secret(UPSTREAM_KEY)
    register_secret(CALLBACK_SECRET)
    cfg = make_config(
        models=[{"model_name": "mock", "litellm_params": {"model": "openai/m", "mock_response": "ok",
                                                          "api_key": UPSTREAM_KEY}}],
        litellm={"default_team_settings": [{"team_id": "cfg-team", "callbacks": ["acme"],
                                            **vars_for("cfg", token=CALLBACK_SECRET)}]})
    secrets = [MASTER, UPSTREAM_KEY, CALLBACK_SECRET]
    async with start(cfg) as gw:
        assert gw.master_key == MASTER
        virtual = await gw.new_key(team_id="t-fuzz")
        response = await gw.admin("POST", "/team/t-fuzz/callback", json={
            "callback_name": "acme", "callback_vars": vars_for("t-fuzz", token=CALLBACK_SECRET)})
        assert response.status_code == 200 and CALLBACK_SECRET not in response.text
        base_url = str(gw.client.base_url)
        seen: dict[int, int] = {}

        @settings(max_examples=400, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(route=st.sampled_from(ROUTES), team=path_params, name=path_params, query=queries, body=bodies,
               auth=st.sampled_from(["master", "virtual", "none", "garbage"]))
        def fuzz(route, team, name, query, body, auth):
            method, template = route
            path = template.format(team=quote(team, safe=""), name=quote(name, safe=""))
            headers = {"content-type": "application/json"}
            if auth != "none":
                headers["authorization"] = ("Bearer " + {"master": MASTER, "virtual": virtual,
                                                         "garbage": "sk-not-a-key-\u00e9"}[auth]).encode("latin-1")
            with httpx.Client(base_url=base_url, timeout=10) as client:
                response = client.request(method, path, params=query, headers=headers,
                                          content=body if method != "GET" else None)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            check_response(response, secrets)

        await asyncio.to_thread(fuzz)
        # the cases reached past auth and validation too: successes as well as 4xx of several kinds
        assert seen.get(200, 0) >= 20 and len([s for s in seen if 400 <= s < 500]) >= 3, seen
        # what was fuzzed is still readable, still masked
        for path in ("/team/t-fuzz/callback", "/team/cfg-team/callback", "/-/sinks", "/key/list"):
            check_response(await gw.admin("GET", path), secrets)


async def test_the_checks_catch_a_500_a_traceback_and_a_secret(make_config, start):
    """Negative control for :func:`check_response`: each kind of failure it looks for is detected."""
    request = httpx.Request("GET", "http://x/")
    bad = [httpx.Response(500, json={"error": {"message": "m", "type": "t", "param": None, "code": "500"}},
                          request=request),
           httpx.Response(400, text='Traceback (most recent call last):\n  File "x.py"', request=request),
           httpx.Response(200, json={"master": MASTER}, request=request),
           httpx.Response(404, json={"detail": "not found"}, request=request)]
    for response in bad:
        with pytest.raises(AssertionError):
            check_response(response, [MASTER])
    check_response(httpx.Response(404, json={"error": {"message": "m", "type": "t", "param": None, "code": "404"}},
                                  request=request), [MASTER])


def _slow_client(port: int, body_bytes: int, dribble: float, limit: float) -> tuple[float, bytes]:
    """Send headers, then one body byte every ``dribble`` seconds; how long until the server ends it."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"authorization: Bearer " + MASTER.encode() + b"\r\n"
                     b"content-length: " + str(body_bytes).encode() + b"\r\n\r\n")
        sock.settimeout(dribble)
        answer = b""
        while time.monotonic() - started < limit:
            try:
                sock.sendall(b" ")
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            except TimeoutError:
                continue
            except OSError:
                break
        return time.monotonic() - started, answer


async def test_a_slow_client_dribbling_its_body_is_cut_off_by_the_server(make_config, start):
    """``request_body_timeout`` bounds how long a body may take: the dribbling client gets 408 and is dropped."""
    cfg = make_config()
    cfg["sluicegate_settings"]["request_body_timeout"] = 1.0
    async with start(cfg) as gw:
        port = gw.client.base_url.port
        elapsed, answer = await asyncio.to_thread(_slow_client, port, 10_000, 0.05, 3.0)
        assert elapsed < 2.5, f"the server let a client dribble its body for {elapsed:.1f} s"
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"param"' in answer and b"Traceback" not in answer


async def test_a_slow_client_does_not_hold_up_other_requests(make_config, start):
    """Whatever a dribbling client costs, it costs only its own connection: others are answered meanwhile."""
    async with start(make_config()) as gw:
        port = gw.client.base_url.port
        slow = [asyncio.create_task(asyncio.to_thread(_slow_client, port, 10_000, 0.05, 1.5)) for _ in range(6)]
        key = await gw.new_key()
        started = time.monotonic()
        answers = await asyncio.gather(*(gw.chat(key, f"n{i}") for i in range(20)))
        fast = time.monotonic() - started
        assert all(a.status_code == 200 for a in answers)
        assert fast < 1.5, f"20 normal requests took {fast:.2f} s beside 6 slow clients"
        assert not any(task.done() for task in slow)  # control: the slow clients were still connected meanwhile
        await asyncio.gather(*slow)


def test_log_scan_control_a_logged_secret_is_found(secret_log_scan):
    """Negative control for the session's log scan: a secret written to a sluicegate logger is recorded."""
    control = "sk-control-" + "c" * 20  # not registered: the session-end assertion must not fail on it
    logging.getLogger("sluicegate.test").debug("oops %s", control)
    logging.getLogger("some.library").info("also %s", control + "-lib")
    logging.getLogger("some.library").debug("quiet %s", control + "-debug")  # below INFO for other loggers
    lines = [line for line in secret_log_scan.lines if control in line]
    assert len(lines) == 2 and "oops" in lines[0] and "also" in lines[1], lines


def test_the_fuzzer_covers_every_route_of_the_app(tmp_path):
    """A route added to the app without being added to ROUTES fails here (so it cannot escape the fuzzer)."""
    from sluicegate.app import create_app
    from sluicegate.config import parse_settings

    app = create_app(parse_settings({"general_settings": {
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/x.db"}}))
    served = set()
    for route in app.routes:
        path = (route.path.replace("{team_id:str}", "{team}").replace("{callback_name:str}", "{name}")
                .replace("{model:path}", "{name}").replace("{token_id:str}", "{name}")
                .replace("{section:str}", "{name}").replace("{file_path:path}", "{name}")
                .replace("{audit_id:str}", "{name}").replace("{response_id:str}", "{name}"))
        for method in getattr(route, "methods", ()):
            if method not in ("HEAD", "OPTIONS"):
                served.add((method, path))
    assert served == set(ROUTES)
