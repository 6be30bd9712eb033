"""Fixtures for the logging pipeline tests: a real gateway app with the acme sink really installed.

The acme sink (tests/fixtures/acme_sink) is a third-party-shaped distribution. It is pip-installed (uv) into a
temporary folder once per session and put on ``sys.path`` per test, so discovery runs through its installed
entry-point metadata exactly as for any plugin, and tests without the fixture do not see it.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from sluicegate.app import create_app
from sluicegate.config import parse_settings
from sluicegate.testing.receiver import HttpReceiver

MASTER = "sk-master-pipeline-test"
ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")


@pytest.fixture(scope="session")
def acme_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("acme-installed")
    subprocess.run([str(UV), "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(ROOT / "tests" / "fixtures" / "acme_sink")], check=True, capture_output=True)
    return target


@pytest.fixture
def acme(acme_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(acme_path))
    importlib.invalidate_caches()
    return acme_path


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as running:
        yield running


def config(tmp_path: Path, *, litellm: dict[str, Any] | None = None, models: list[dict[str, Any]] | None = None,
           delivery: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "model_list": models or [
            {"model_name": "mock", "litellm_params": {"model": "openai/mock-1", "mock_response": "The answer is 42."}},
            {"model_name": "down", "litellm_params": {"model": "openai/down", "api_base": "http://127.0.0.1:9/v1",
                                                      "timeout": 5}},
        ],
        "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw.db"},
        "litellm_settings": litellm or {},
        "sluicegate_settings": {"delivery": {"batch_interval": 0.01, "retry_base_delay": 0.02,
                                             "retry_max_delay": 0.1, **(delivery or {})},
                                "change_poll_interval": 0.05},
    }


class Gw:
    """A running gateway app and helpers to talk to it."""

    def __init__(self, client: httpx.AsyncClient, app: Any) -> None:
        self.client = client
        self.app = app
        self.gateway = app.state.gateway

    async def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        return await self.client.request(method, path, headers={"Authorization": f"Bearer {MASTER}"}, **kwargs)

    async def new_key(self, **body: Any) -> str:
        response = await self.admin("POST", "/key/generate", json=body)
        assert response.status_code == 200, response.text
        return response.json()["key"]

    async def chat(self, key: str, content: str = "hello", *, model: str = "mock", stream: bool = False,
                   **extra: Any) -> Any:
        body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream, **extra}
        return await self.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})


@asynccontextmanager
async def running(cfg: dict[str, Any], environ: dict[str, str] | None = None) -> AsyncIterator[Gw]:
    """Serve the app with uvicorn on a loopback socket in the test's own event loop, so requests, the
    lifespan and the delivery tasks share one loop, as in production."""
    app = create_app(parse_settings(cfg), environ=environ)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 20
    while not server.started:
        if task.done():
            task.result()
        assert time.monotonic() < deadline, "gateway did not start within 20 s"
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield Gw(client, app)
    finally:
        server.should_exit = True
        await task
        sock.close()


def acme_vars(receiver: HttpReceiver, dest: str, token: str = "tok-" + "x" * 8, **extra: Any) -> dict[str, Any]:
    return {"url": f"{receiver.url}/dest/{dest}", "api_token": token, **extra}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ACME_URL", "ACME_TOKEN", "SLUICEGATE_LOAD_PLUGINS", "SLUICEGATE_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_config(tmp_path: Path):
    """``make_config(litellm=..., models=..., delivery=...)`` → a config dict with a temp SQLite database."""
    return lambda **kwargs: config(tmp_path, **kwargs)


@pytest.fixture
def start():
    """``async with start(cfg) as gw:`` → a running gateway (:class:`Gw`)."""
    return running


@pytest.fixture
def vars_for(receiver: HttpReceiver):
    """``vars_for("team-1")`` → acme callback_vars delivering to the receiver under ``/dest/team-1``."""
    return lambda dest, **extra: acme_vars(receiver, dest, **extra)
