"""Through the whole gateway: config → request → dispatcher → gcs_bucket sink → fake-gcs-server.

The app is served by uvicorn in the test's event loop (as in production, the delivery tasks share the loop
with requests); storage and token endpoint are the real fake-gcs-server behind the loopback IAM gate of
``conftest.py``. Only this distribution's plugin is loaded (``SLUICEGATE_LOAD_PLUGINS``).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import uvicorn

from sluicegate.app import create_app
from sluicegate.config import parse_settings

MASTER = "sk-master-gcs-test"
ENVIRON = {"SLUICEGATE_LOAD_PLUGINS": "sluicegate-gcs-sink"}


def gateway_config(tmp_path, teams: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "mock", "litellm_params": {"model": "openai/mock-1",
                                                                 "mock_response": "The answer is 42."}}],
        "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw.db"},
        "litellm_settings": {"default_team_settings": teams},
        "sluicegate_settings": {"delivery": {"batch_interval": 0.01, "retry_base_delay": 0.02,
                                             "retry_max_delay": 0.1}, "change_poll_interval": 0.05},
    }


@asynccontextmanager
async def serve(cfg: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(parse_settings(cfg), environ=ENVIRON)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    await until(lambda: server.started or task.done(), "the gateway to start")
    if task.done():
        task.result()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30,
                                     headers={"Authorization": f"Bearer {MASTER}"}) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        sock.close()


async def until(condition, what: str, timeout: float = 15.0) -> None:
    """Wait for ``condition`` with a deadline (checked between turns of the event loop)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)  # deliberate: polls a condition under a deadline


async def new_key(client: httpx.AsyncClient, team_id: str) -> str:
    response = await client.post("/key/generate", json={"team_id": team_id})
    assert response.status_code == 200, response.text
    return response.json()["key"]


async def chat(client: httpx.AsyncClient, key: str, content: str) -> httpx.Response:
    response = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                 json={"model": "mock", "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200, response.text
    return response


def team(team_id: str, bucket: str, key_file) -> dict[str, Any]:
    return {"team_id": team_id, "success_callback": ["gcs_bucket"],
            "callback_vars": {"gcs_bucket_name": bucket, "gcs_path_service_account": str(key_file)}}


def lines(fake_gcs, bucket: str) -> list[dict]:
    return [msgspec.json.decode(line) for data in fake_gcs.objects(bucket).values() for line in data.splitlines()]


async def test_each_team_logs_to_its_own_bucket(gcs_env, fake_gcs, new_bucket, tmp_path):
    bucket_a, bucket_b = new_bucket("gw-a"), new_bucket("gw-b")
    account_a, account_b = gcs_env.account("gw-a", bucket_a), gcs_env.account("gw-b", bucket_b)
    cfg = gateway_config(tmp_path, [team("team-a", f"{bucket_a}/logs", account_a.key_file),
                                    team("team-b", bucket_b, account_b.key_file)])
    async with serve(cfg) as client:
        key_a, key_b = await new_key(client, "team-a"), await new_key(client, "team-b")
        await asyncio.gather(*(chat(client, key_a, f"a{i}") for i in range(3)),
                             *(chat(client, key_b, f"b{i}") for i in range(2)))
        await until(lambda: len(lines(fake_gcs, bucket_a)) >= 3 and len(lines(fake_gcs, bucket_b)) >= 2,
                    "both teams' events in their buckets")
        health_a = (await client.post("/key/health", headers={"Authorization": f"Bearer {key_a}"})).json()
    in_a, in_b = lines(fake_gcs, bucket_a), lines(fake_gcs, bucket_b)
    assert len(in_a) == 3 and {e["metadata"]["user_api_key_team_id"] for e in in_a} == {"team-a"}
    assert len(in_b) == 2 and {e["metadata"]["user_api_key_team_id"] for e in in_b} == {"team-b"}
    assert all(name.startswith("logs/") for name in fake_gcs.objects(bucket_a))
    assert health_a["key"] == "healthy" and health_a["logging_callbacks"]["status"] == "healthy"
    # The key file path never reaches an event.
    assert str(account_a.key_file) not in str(in_a) and str(account_b.key_file) not in str(in_b)


async def test_missing_bucket_is_unhealthy_and_transient_errors_are_retried(gcs_env, fake_gcs, new_bucket,
                                                                            tmp_path):
    bucket = new_bucket("gw-ok")
    account = gcs_env.account("gw-retry", bucket)
    cfg = gateway_config(tmp_path, [team("team-ok", bucket, account.key_file),
                                    team("team-gone", "bucket-that-was-never-made", account.key_file)])
    async with serve(cfg) as client:
        key_ok, key_gone = await new_key(client, "team-ok"), await new_key(client, "team-gone")
        gone = (await client.post("/key/health", headers={"Authorization": f"Bearer {key_gone}"})).json()
        ok = (await client.post("/key/health", headers={"Authorization": f"Bearer {key_ok}"})).json()
        gcs_env.fail_next("upload", 503, times=2)
        response = await chat(client, key_ok, "retried")
        await until(lambda: len(lines(fake_gcs, bucket)) >= 1, "the retried event")
    # A key holder reads the kind of failure only (issue 21 #2); the bucket's absence is the admin's to read.
    assert gone["key"] == "unhealthy" and gone["logging_callbacks"]["details"] == "gcs_bucket: rejected"
    assert ok["key"] == "healthy"  # control
    assert gcs_env.failures["upload:503"] == 0  # both injected failures were met, then the retry landed
    stored = lines(fake_gcs, bucket)
    assert len(stored) == 1 and stored[0]["response"]["id"] == response.json()["id"]


async def test_unusable_key_file_is_refused_at_configuration_time(gcs_env, new_bucket, tmp_path):
    bucket = new_bucket("gw-cfg")
    account = gcs_env.account("gw-cfg", bucket)
    hidden = tmp_path / "private-dir" / "missing.json"
    async with serve(gateway_config(tmp_path, [])) as client:
        assert (await client.post("/team/new", json={"team_id": "t"})).status_code == 200
        refused = await client.post("/team/t/callback", json={"callback_name": "gcs_bucket", "callback_vars": {
            "gcs_bucket_name": bucket, "gcs_path_service_account": str(hidden)}})
        accepted = await client.post("/team/t/callback", json={"callback_name": "gcs_bucket", "callback_vars": {
            "gcs_bucket_name": bucket, "gcs_path_service_account": str(account.key_file)}})
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["param"] == "callback_vars.gcs_path_service_account"
    assert "does not exist" in error["message"] and "private-dir" not in refused.text
    assert accepted.status_code == 200, accepted.text  # control
    assert str(account.key_file) not in accepted.text  # masked in the answer
