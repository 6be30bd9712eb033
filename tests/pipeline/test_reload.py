"""Live reload: ``POST /config/reload`` and ``SIGHUP`` re-read config.yaml, validate it fully and swap it in while
requests keep flowing; a bad file keeps the running configuration and says why."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sluicegate.testing import wait_until

pytestmark = pytest.mark.usefixtures("acme", "clean_env")


def team_config(make_config: Any, vars_for: Any, dest: str, **extra_models: Any) -> dict[str, Any]:
    cfg = make_config()
    cfg["litellm_settings"] = {"default_team_settings": [
        {"team_id": "t", "success_callback": ["acme"], "callback_vars": vars_for(dest)}]}
    for name, model in extra_models.items():
        cfg["model_list"].append({"model_name": name, "litellm_params": {"model": model, "mock_response": name}})
    return cfg


def write(path: Path, cfg: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg))
    tmp.replace(path)  # as an editor or a config-map update would: never half a file


async def test_reload_under_load_fails_nothing_and_new_requests_reach_the_new_destination(
        receiver, make_config, vars_for, tmp_path):
    from sluicegate.testing.gateway import running_gateway

    path = tmp_path / "config.yaml"
    write(path, team_config(make_config, vars_for, "old"))
    async with running_gateway(yaml.safe_load(path.read_text()), source=str(path)) as gw:
        assert (await gw.admin("POST", "/team/new", json={"team_id": "t"})).status_code == 200
        key = await gw.new_key(team_id="t")
        spans: dict[str, tuple[float, float]] = {}
        failures: list[str] = []
        stop = asyncio.Event()

        async def client(worker: int) -> None:
            n = 0
            while not stop.is_set():
                content = f"w{worker}-{n}"
                n += 1
                began = time.monotonic()
                response = await gw.chat(key, content)
                spans[content] = (began, time.monotonic())
                if response.status_code != 200:
                    failures.append(f"{content}: {response.status_code} {response.text[:200]}")

        clients = [asyncio.create_task(client(i)) for i in range(8)]
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/old")) >= 40)
        write(path, team_config(make_config, vars_for, "new", added="openai/added-1"))
        reload_started = time.monotonic()
        answer = await gw.admin("POST", "/config/reload")
        reload_returned = time.monotonic()
        assert answer.status_code == 200, answer.text
        assert answer.json()["restart_needed"] == [] and answer.json()["status"] == "reloaded"
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/new")) >= 40)
        stop.set()
        await asyncio.gather(*clients)
        assert (await gw.chat(key, "the added model", model="added")).status_code == 200
        spans["the added model"] = (time.monotonic(), time.monotonic())

        def where() -> dict[str, list[str]]:
            seen: dict[str, list[str]] = {}
            for dest in ("old", "new"):
                for event in receiver.events_at(f"/dest/{dest}"):
                    seen.setdefault(event["messages"][0]["content"], []).append(dest)
            return seen

        assert await receiver.wait_for_async(lambda: len(where()) == len(spans))
    assert failures == []
    seen = where()
    assert all(len(dests) == 1 for dests in seen.values()), "an event went to both destinations or twice"
    after = [c for c, (began, _) in spans.items() if began > reload_returned]
    before = [c for c, (_, ended) in spans.items() if ended < reload_started]
    assert len(after) >= 20 and len(before) >= 20
    assert {seen[c][0] for c in after} == {"new"}
    assert {seen[c][0] for c in before} == {"old"}


async def test_a_bad_file_keeps_the_running_configuration_and_says_why(receiver, make_config, vars_for, tmp_path,
                                                                      caplog):
    from sluicegate.testing.gateway import running_gateway

    path = tmp_path / "config.yaml"
    cfg = team_config(make_config, vars_for, "old")
    write(path, cfg)
    async with running_gateway(cfg, source=str(path)) as gw:
        assert (await gw.admin("POST", "/team/new", json={"team_id": "t"})).status_code == 200
        key = await gw.new_key(team_id="t")
        broken = team_config(make_config, vars_for, "new")
        broken["model_list"].append({"model_name": "x", "litellm_params": {"model": "nosuchprovider/x"}})
        broken["litellm_settings"]["sucess_callback"] = ["acme"]
        write(path, broken)
        answer = await gw.admin("POST", "/config/reload")
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["param"] == "config" and "running configuration stays" in error["message"]
        assert any("sucess_callback" in p and "success_callback" in p for p in error["problems"])
        assert "config reload refused" in caplog.text
        assert (await gw.chat(key, "after the bad reload")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/old")) == 1)
        assert receiver.events_at("/dest/new") == []
        # a restart-only change is applied to nothing else and named
        fine = team_config(make_config, vars_for, "old")
        fine["sluicegate_settings"]["header_timeout"] = 3
        write(path, fine)
        answer = await gw.admin("POST", "/config/reload")
        assert answer.status_code == 200 and answer.json()["restart_needed"] == ["sluicegate_settings.header_timeout"]
        # only the master key may reload
        assert (await gw.client.post("/config/reload", headers={"Authorization": f"Bearer {key}"})).status_code == 403


def test_sighup_reloads_a_served_gateway(tmp_path):
    """``sluicegate serve`` (one worker) reloads on SIGHUP: the model list changes without a restart (same pid); a
    bad file then keeps the running configuration and the log says why. The delivery process reloads with the
    workers, by the signal and by ``POST /config/reload``, and keeps its configuration on a bad file too."""
    port = _free_port()
    path = tmp_path / "config.yaml"
    base = {"model_list": [{"model_name": "first", "litellm_params": {"model": "openai/a", "mock_response": "a"}}],
            "general_settings": {"master_key": "sk-admin", "database_url": f"sqlite+aiosqlite:///{tmp_path}/g.db"}}
    write(path, base)
    log = tmp_path / "serve.log"
    process = subprocess.Popen([sys.executable, "-m", "sluicegate", "serve", "--config", str(path), "--port",
                                str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp_path)
    headers = {"Authorization": "Bearer sk-admin"}
    url = f"http://127.0.0.1:{port}/v1/models"

    def models() -> set[str] | None:
        try:
            return {m["id"] for m in httpx.get(url, headers=headers, timeout=2).json()["data"]}
        except httpx.HTTPError:
            return None

    try:
        assert wait_until(lambda: models() == {"first"}, timeout=60)
        base["model_list"].append({"model_name": "second", "litellm_params": {"model": "openai/b",
                                                                              "mock_response": "b"}})
        write(path, base)
        os.kill(process.pid, signal.SIGHUP)
        assert wait_until(lambda: models() == {"first", "second"}, timeout=20)
        assert wait_until(lambda: log.read_text().count("delivery: config.yaml reloaded") == 1, timeout=20)
        answer = httpx.post(f"http://127.0.0.1:{port}/config/reload", headers=headers, timeout=20)
        assert answer.status_code == 200 and answer.json()["delivery_process"] == "reloaded", answer.text
        assert log.read_text().count("delivery: config.yaml reloaded") == 2
        path.write_text("model_list: [")
        os.kill(process.pid, signal.SIGHUP)
        assert wait_until(lambda: "SIGHUP: config reload refused" in log.read_text(), timeout=20)
        assert wait_until(lambda: "delivery: config reload refused" in log.read_text(), timeout=20)
        assert "not valid YAML" in log.read_text()
        assert models() == {"first", "second"} and process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
