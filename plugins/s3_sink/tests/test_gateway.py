"""Through the whole gateway: config → request → dispatcher (spool on) → s3 sink → moto's S3 server.

The app is served by uvicorn in the test's event loop (``sluicegate.testing.running_gateway``); only this
distribution's plugin is loaded (``SLUICEGATE_LOAD_PLUGINS``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sluicegate.testing import TcpRelay, running_gateway, wait_until

MASTER = "sk-master-s3-test"
ENVIRON = {"SLUICEGATE_LOAD_PLUGINS": "sluicegate-s3-sink"}


def gateway_config(tmp_path, teams: list[dict[str, Any]], **delivery: Any) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "mock", "litellm_params": {"model": "openai/mock-1",
                                                                 "mock_response": "The answer is 42."}}],
        "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw.db"},
        "litellm_settings": {"default_team_settings": teams},
        "sluicegate_settings": {"delivery": {"batch_interval": 0.01, "retry_base_delay": 0.02,
                                             "retry_max_delay": 0.1, "spool_dir": str(tmp_path / "spool"),
                                             "spool_flush_interval": 0.05, **delivery},
                                "change_poll_interval": 0.05},
    }


def team(team_id: str, callback_vars: dict[str, Any]) -> dict[str, Any]:
    return {"team_id": team_id, "success_callback": ["s3"], "callback_vars": callback_vars}


async def ask(gw, key: str, content: str) -> None:
    response = await gw.chat(key, content)
    assert response.status_code == 200, response.text


async def test_each_team_logs_to_its_own_bucket_and_a_disabled_team_nowhere(moto_s3, new_bucket, tmp_path):
    bucket_a, bucket_b, bucket_gdpr = new_bucket("gw-a"), new_bucket("gw-b"), new_bucket("gw-gdpr")
    cfg = gateway_config(tmp_path, [team("team-a", moto_s3.writer.vars(moto_s3, bucket_a, s3_path="logs")),
                                    team("team-b", moto_s3.writer.vars(moto_s3, bucket_b)),
                                    team("team-gdpr", moto_s3.writer.vars(moto_s3, bucket_gdpr))])
    async with running_gateway(cfg, environ=ENVIRON) as gw:
        key_a, key_b, key_gdpr = [await gw.new_key(team_id=t) for t in ("team-a", "team-b", "team-gdpr")]
        await ask(gw, key_gdpr, "gdpr-before")  # control: the GDPR team's sink works while logging is on
        await asyncio.to_thread(wait_until, lambda: len(moto_s3.events(bucket_gdpr)) == 1, timeout=15, what="the control event")
        disabled = await gw.admin("POST", "/team/team-gdpr/disable_logging")
        assert disabled.status_code == 200, disabled.text
        await asyncio.gather(*(ask(gw, key_a, f"a{i}") for i in range(3)), *(ask(gw, key_b, f"b{i}") for i in range(2)),
                             *(ask(gw, key_gdpr, f"gdpr-secret-{i}") for i in range(3)))
        await asyncio.to_thread(wait_until, lambda: len(moto_s3.events(bucket_a)) >= 3 and len(moto_s3.events(bucket_b)) >= 2,
                         timeout=15, what="both teams' events in their buckets")
        await gw.gateway.dispatcher.drain(5)
        health_a = (await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key_a}"})).json()
    in_a, in_b, in_gdpr = (moto_s3.events(b) for b in (bucket_a, bucket_b, bucket_gdpr))
    assert sorted(e["messages"][0]["content"] for e in in_a) == ["a0", "a1", "a2"]
    assert {e["metadata"]["user_api_key_team_id"] for e in in_a} == {"team-a"}
    assert sorted(e["messages"][0]["content"] for e in in_b) == ["b0", "b1"]
    assert all(key.startswith("logs/") for key in moto_s3.keys(bucket_a))
    assert [e["messages"][0]["content"] for e in in_gdpr] == ["gdpr-before"]  # nothing after disable_logging
    assert "gdpr-secret" not in str(in_a) + str(in_b)
    assert health_a["key"] == "healthy" and health_a["logging_callbacks"]["status"] == "healthy", health_a
    assert moto_s3.writer.secret_access_key not in str(in_a)  # credentials never reach an event


async def test_key_health_makes_a_real_call_and_shows_a_key_holder_only_the_kind(moto_s3, new_bucket, tmp_path):
    bucket = new_bucket("gw-health")
    wrong_secret = "wrong-secret-for-health-0123456789abcd"
    cfg = gateway_config(tmp_path, [
        team("team-ok", moto_s3.writer.vars(moto_s3, bucket)),
        team("team-wrong", moto_s3.writer.vars(moto_s3, bucket, s3_aws_secret_access_key=wrong_secret)),
        team("team-gone", moto_s3.writer.vars(moto_s3, "bucket-never-made"))])
    async with running_gateway(cfg, environ=ENVIRON) as gw:
        answers = {}
        for name in ("ok", "wrong", "gone"):
            key = await gw.new_key(team_id=f"team-{name}")
            response = await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key}"})
            answers[name] = response.json()
            assert wrong_secret not in response.text
        admin_view = await gw.admin("GET", "/-/sinks")
    assert answers["ok"]["key"] == "healthy", answers["ok"]  # control
    assert answers["wrong"]["key"] == "unhealthy"
    assert answers["wrong"]["logging_callbacks"]["details"] == "s3: auth"
    assert answers["gone"]["key"] == "unhealthy"
    assert answers["gone"]["logging_callbacks"]["details"] == "s3: rejected"  # the bucket's name is the admin's
    assert wrong_secret not in admin_view.text


async def test_an_outage_then_recovery_loses_nothing(moto_s3, new_bucket, tmp_path):
    bucket = new_bucket("gw-outage")
    relay = TcpRelay(int(moto_s3.url.rsplit(":", 1)[1]))
    callback_vars = moto_s3.writer.vars(moto_s3, bucket, s3_endpoint_url=relay.url)
    cfg = gateway_config(tmp_path, [team("team-o", callback_vars)], queue_size=10, max_retries=2)
    try:
        async with running_gateway(cfg, environ=ENVIRON) as gw:
            key = await gw.new_key(team_id="team-o")
            sent = [f"outage-{i}" for i in range(30)]
            for first in range(0, len(sent), 10):
                await asyncio.gather(*(ask(gw, key, content) for content in sent[first:first + 10]))
            await asyncio.to_thread(wait_until, lambda: gw.gateway.dispatcher.stats()[0]["last_error"], timeout=10,
                             what="a failed send during the outage")
            assert "unreachable" in gw.gateway.dispatcher.stats()[0]["last_error"]
            assert moto_s3.keys(bucket) == []  # nothing got through while the port refused
            await relay.open()
            after = [f"after-{i}" for i in range(5)]
            await asyncio.gather(*(ask(gw, key, content) for content in after))
            await asyncio.to_thread(wait_until, lambda: len(moto_s3.events(bucket)) >= len(sent) + len(after), timeout=20,
                             what="every accepted event in the bucket")
            stats = gw.gateway.dispatcher.stats()[0]
    finally:
        await relay.close()
    contents = [e["messages"][0]["content"] for e in moto_s3.events(bucket)]
    assert sorted(contents) == sorted(sent + after)  # none lost, none duplicated
    assert stats["dropped"] == 0 and stats["retried"] > 0, stats
