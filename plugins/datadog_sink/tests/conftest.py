"""Fixtures for the datadog sink tests: a loopback logs intake and site routing to it."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sluicegate_datadog_sink.sink import DatadogSink


def _load_intake_module() -> ModuleType:
    # --import-mode=importlib puts no tests directory on sys.path; load the helper under a unique name.
    name = "sluicegate_datadog_sink_tests_intake"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("datadog_intake.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


ACCOUNTS = {
    "dd-key-global-0123456789abcdef": "datadoghq.com",
    "dd-key-team-a-0123456789abcdef": "datadoghq.eu",
    "dd-key-team-b-0123456789abcdef": "us5.datadoghq.com",
}
GLOBAL_KEY, TEAM_A_KEY, TEAM_B_KEY = ACCOUNTS


@pytest.fixture
def intake_module() -> ModuleType:
    return _load_intake_module()


@pytest.fixture(autouse=True)
async def _release_shared_client() -> AsyncIterator[None]:
    yield
    await DatadogSink.shutdown()


@pytest.fixture
async def make_intake(intake_module: ModuleType) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Start fake intakes with custom limits; all are stopped (after the shared client closes) at teardown."""
    started = []

    async def start(accounts: dict[str, str] | None = None, **options: Any) -> Any:
        server = intake_module.FakeDatadogIntake(dict(ACCOUNTS if accounts is None else accounts), **options)
        started.append(await server.start())
        return server

    yield start
    await DatadogSink.shutdown()
    for server in started:
        await server.stop()


@pytest.fixture
async def intake(make_intake: Callable[..., Awaitable[Any]]) -> Any:
    return await make_intake()


@pytest.fixture
def route_sites(monkeypatch: pytest.MonkeyPatch, intake_module: ModuleType) -> Callable[[Any], None]:
    """Route the sink's https://*.{site} requests to a fake intake on loopback, Host header intact."""

    def route(server: Any) -> None:
        monkeypatch.setattr(DatadogSink, "_transport_wrapper",
                            lambda inner: intake_module.LoopbackTransport(server.port, inner))

    return route
