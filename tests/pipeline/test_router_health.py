"""``GET /health`` and background health checks, end to end: real gateways under uvicorn, a real OpenAI-compatible
upstream on loopback (the shared ``mock_upstream``: healthy, answering 500, or too slow) and a closed port for
refused connections."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from sluicegate.config import ConfigError, parse_settings
from tests.conftest import closed_port

pytestmark = pytest.mark.usefixtures("clean_env")


def up(name: str, upstream_model: str, base: str, ident: str, **params: Any) -> dict[str, Any]:
    info = {"id": ident, **params.pop("model_info", {})}
    return {"model_name": name, "model_info": info,
            "litellm_params": {"model": f"openai/{upstream_model}", "api_base": base, "api_key": "sk-upstream-h",
                               "timeout": 5, **params}}


def cfg(make_config, models: list[dict[str, Any]], general: dict[str, Any] | None = None,
        router: dict[str, Any] | None = None) -> dict[str, Any]:
    config = make_config(models=models)
    config["general_settings"].update(general or {})
    config["router_settings"] = router or {}
    return config


def ids(entries: list[dict[str, Any]]) -> set[str]:
    return {e["model_id"] for e in entries}


def sent(upstream, model: str) -> list[dict[str, Any]]:
    return [r["body"] for r in upstream.requests if (r["body"] or {}).get("model") == model]


async def test_health_probes_every_deployment_and_reports_the_error_kind_with_secrets_scrubbed(
        start, make_config, mock_upstream, register_secret):
    t = uuid.uuid4().hex[:10]
    secret = register_secret(f"sk-upstream-echoed-{t}")
    # the upstream echoes the credential it received, as a misbehaving proxy or debug endpoint would
    mock_upstream.on(f"bad-{t}", status=500, body={"error": {
        "message": f"internal error; request had Authorization: Bearer {secret} and key {secret}",
        "type": "server_error"}})
    refused = f"http://127.0.0.1:{closed_port()}/v1"
    models = [up("g", f"good-{t}", mock_upstream.url, f"good-{t}"),
              up("g", f"bad-{t}", mock_upstream.url, f"bad-{t}", api_key=secret),
              up("g", f"gone-{t}", refused, f"gone-{t}"),
              {"model_name": "offline", "model_info": {"id": f"mock-{t}"},
               "litellm_params": {"model": f"openai/offline-{t}", "mock_response": "hi"}}]
    async with start(cfg(make_config, models)) as gw:
        answer = await gw.admin("GET", "/health")
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert secret not in answer.text
        assert ids(report["healthy_endpoints"]) == {f"good-{t}", f"mock-{t}"}
        assert ids(report["unhealthy_endpoints"]) == {f"bad-{t}", f"gone-{t}"}
        assert (report["healthy_count"], report["unhealthy_count"]) == (2, 2)
        by_id = {e["model_id"]: e for e in report["unhealthy_endpoints"]}
        bad, gone = by_id[f"bad-{t}"], by_id[f"gone-{t}"]
        assert (bad["error_class"], bad["error_kind"], bad["status_code"]) == ("InternalServerError", "unreachable",
                                                                               500)
        assert "***REDACTED***" in bad["error"]  # the echo arrived, masked (control: it did carry the secret)
        assert (bad["model"], bad["api_base"], bad["custom_llm_provider"]) == (f"openai/bad-{t}", mock_upstream.url,
                                                                               "openai")
        assert (gone["error_class"], gone["error_kind"]) == ("APIConnectionError", "unreachable")
        assert gone["api_base"] == refused
        # a minimal call: one token, nothing for the offline deployment
        probe = sent(mock_upstream, f"good-{t}")
        assert len(probe) == 1 and probe[0]["max_tokens"] == 1
        assert sent(mock_upstream, f"offline-{t}") == []
        # on demand: every call probes again
        assert (await gw.admin("GET", "/health")).status_code == 200
        assert len(sent(mock_upstream, f"good-{t}")) == 2
        # one model group, one deployment; unknown ones are a 400 naming the parameter
        one = (await gw.admin("GET", "/health", params={"model_id": f"bad-{t}"})).json()
        assert ids(one["unhealthy_endpoints"]) == {f"bad-{t}"} and one["healthy_count"] == 0
        group = (await gw.admin("GET", "/health", params={"model": "offline"})).json()
        assert ids(group["healthy_endpoints"]) == {f"mock-{t}"} and group["unhealthy_count"] == 0
        for param in ("model", "model_id"):
            wrong = await gw.admin("GET", "/health", params={param: "nope"})
            assert wrong.status_code == 400 and wrong.json()["error"]["param"] == param
        # the master key only
        key = await gw.new_key()
        refused_answer = await gw.client.get("/health", headers={"Authorization": f"Bearer {key}"})
        assert refused_answer.status_code == 403


async def test_probes_run_concurrently_each_within_its_timeout(start, make_config, mock_upstream):
    t = uuid.uuid4().hex[:10]
    for name in (f"slow1-{t}", f"slow2-{t}", f"slow3-{t}"):
        mock_upstream.on(name, delay=4)
    models = [up("s", name, mock_upstream.url, name, model_info={"health_check_timeout": 0.5})
              for name in (f"slow1-{t}", f"slow2-{t}", f"slow3-{t}")]
    models.append(up("s", f"quick-{t}", mock_upstream.url, f"quick-{t}"))
    async with start(cfg(make_config, models)) as gw:
        began = time.monotonic()
        report = (await gw.admin("GET", "/health")).json()
        took = time.monotonic() - began
        assert ids(report["unhealthy_endpoints"]) == {f"slow1-{t}", f"slow2-{t}", f"slow3-{t}"}
        assert ids(report["healthy_endpoints"]) == {f"quick-{t}"}
        assert {(e["error_kind"], e["error_class"]) for e in report["unhealthy_endpoints"]} == {("timeout", "Timeout")}
        assert took < 1.4, took  # three 0.5 s timeouts side by side, not one after another


async def test_background_checks_mark_the_dead_deployment_and_the_router_avoids_it(start, make_config,
                                                                                   mock_upstream):
    t = uuid.uuid4().hex[:10]
    refused = f"http://127.0.0.1:{closed_port()}/v1"
    mock_upstream.on(f"solo-{t}", status=500)
    models = [up("b", f"good-{t}", mock_upstream.url, f"good-{t}"), up("b", f"gone-{t}", refused, f"gone-{t}"),
              up("solo", f"solo-{t}", mock_upstream.url, f"solo-{t}")]
    # no retries and no cooldowns: only the health view can keep requests away from the dead deployment
    router = {"num_retries": 0, "disable_cooldowns": True}
    background = {"background_health_checks": True, "health_check_interval": 3600}
    async with start(cfg(make_config, models, background, router)) as gw:
        report = (await gw.admin("GET", "/health")).json()  # waits for the first background round
        assert ids(report["unhealthy_endpoints"]) == {f"gone-{t}", f"solo-{t}"}
        assert gw.gateway.router.unhealthy == {f"gone-{t}", f"solo-{t}"}
        key = await gw.new_key()
        answers = [await gw.chat(key, f"q{i}", model="b") for i in range(20)]
        assert [a.status_code for a in answers] == [200] * 20
        assert len(sent(mock_upstream, f"good-{t}")) == 1 + 20  # the probe, then every request
        # the cached view is served: /health probes nothing more
        again = (await gw.admin("GET", "/health")).json()
        assert again["checked_at"] == report["checked_at"] and len(sent(mock_upstream, f"good-{t}")) == 21
        # a group whose every deployment is marked still gets its requests (it recovered meanwhile)
        mock_upstream.on(f"solo-{t}")
        assert (await gw.chat(key, model="solo")).status_code == 200
        # the next round clears the mark
        await gw.gateway.router.health.refresh()
        assert gw.gateway.router.unhealthy == {f"gone-{t}"}

    # negative control: the same gateway without background checks sends some requests to the dead deployment
    mock_upstream.on(f"solo-{t}", status=500)
    async with start(cfg(make_config, models, None, router)) as gw:
        key = await gw.new_key()
        answers = [await gw.chat(key, f"q{i}", model="b") for i in range(20)]
        assert 502 in [a.status_code for a in answers]  # all 20 on the good one: probability 2**-20
        assert gw.gateway.router.unhealthy == frozenset()


async def test_background_rounds_repeat_at_the_interval(start, make_config, mock_upstream):
    t = uuid.uuid4().hex[:10]
    models = [up("r", f"r-{t}", mock_upstream.url, f"r-{t}")]
    async with start(cfg(make_config, models, {"background_health_checks": True, "health_check_interval": 0.2})) as gw:
        deadline = time.monotonic() + 10
        while len(sent(mock_upstream, f"r-{t}")) < 3:
            assert time.monotonic() < deadline, "fewer than 3 rounds in 10 s with a 0.2 s interval"
            await asyncio.sleep(0.05)  # deliberate: the poll interval of a deadline-bounded wait


def test_health_settings_are_checked_at_start_up() -> None:
    with pytest.raises(ConfigError, match="general_settings.health_check_interval"):
        parse_settings({"general_settings": {"background_health_checks": True, "health_check_interval": 0}})
    with pytest.raises(ConfigError, match="did you mean 'background_health_checks'"):  # a typo stops start-up
        parse_settings({"general_settings": {"background_health_check": True}})
    assert parse_settings({"general_settings": {"background_health_checks": True}}).general_settings \
        .health_check_interval == 300
