"""Fixtures for the logging pipeline tests: a real gateway app with the acme sink really installed.

The acme sink (tests/fixtures/acme_sink) is a third-party-shaped distribution. It is pip-installed (uv) into a
temporary folder once per session and put on ``sys.path`` per test, so discovery runs through its installed
entry-point metadata exactly as for any plugin, and tests without the fixture do not see it.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sluicegate.testing.gateway import RunningGateway, running_gateway
from sluicegate.testing.receiver import HttpReceiver

MASTER = "sk-master-pipeline-test"
ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")


# -- log scan: no secret used by these tests may appear in any log line of the session ---------------------
_SECRETS: set[str] = {MASTER}


class _LineRecorder(logging.Handler):
    """Every formatted line: ``sluicegate*`` loggers at DEBUG, every other logger at INFO."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("sluicegate") or record.levelno >= logging.INFO

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted must not break the test that logged it
            self.lines.append(f"{record.levelname} {record.name} {record.msg!r} {record.args!r}")


def find_secrets(lines: list[str], secrets: set[str]) -> list[tuple[str, str]]:
    return [(secret, line) for line in lines for secret in secrets if secret and secret in line]


@pytest.fixture(scope="session", autouse=True)
def secret_log_scan() -> Iterator[_LineRecorder]:
    """Record the log output of every pipeline test; at session end, fail if a registered secret is in it.

    Secrets are registered with :func:`register_secret` (the master key is registered here). Gateways run in
    subprocesses (the SIGKILL test) log to their own stderr and are not covered.
    """
    recorder = _LineRecorder()
    root, ours = logging.getLogger(), logging.getLogger("sluicegate")
    levels = (root.level, ours.level)
    root.addHandler(recorder)
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))
    ours.setLevel(logging.DEBUG)
    try:
        yield recorder
    finally:
        root.removeHandler(recorder)
        root.setLevel(levels[0])
        ours.setLevel(levels[1])
    assert recorder.lines, "the log scan recorded nothing: the handler is not attached"
    leaks = find_secrets(recorder.lines, _SECRETS)
    assert not leaks, f"{len(leaks)} log line(s) carry a secret, e.g. {leaks[0][1][:300]!r}"


@pytest.fixture
def register_secret():
    """``register_secret("sk-...")``: the session's log scan fails if this string is ever logged."""
    def register(secret: str) -> str:
        assert len(secret) >= 8, "a secret this short would match innocent text"
        _SECRETS.add(secret)
        return secret
    return register


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


@asynccontextmanager
async def running(cfg: dict[str, Any], environ: dict[str, str] | None = None, *,
                  delivery: str = "inline") -> AsyncIterator[RunningGateway]:
    async with running_gateway(cfg, environ, delivery=delivery) as gw:
        yield gw


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
    """``async with start(cfg) as gw:`` → a running gateway (:class:`~sluicegate.testing.RunningGateway`);
    ``start(cfg, delivery="process")``: a serving worker with the delivery process's work beside it."""
    return running


@pytest.fixture
def vars_for(receiver: HttpReceiver):
    """``vars_for("team-1")`` → acme callback_vars delivering to the receiver under ``/dest/team-1``."""
    return lambda dest, **extra: acme_vars(receiver, dest, **extra)
