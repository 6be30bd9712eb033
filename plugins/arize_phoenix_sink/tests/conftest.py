"""A real Arize Phoenix server (``arize-phoenix``, installed by ``make tools`` into a venv of its own), started once
per test session on loopback ports with a SQLite working directory in a temporary folder and authentication on:
its admin secret is the bearer token the sink sends, and anything else is refused with 401. Spans are read back
with Phoenix's own client (``arize-phoenix-client``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sluicegate_arize_phoenix_sink.sink import ArizePhoenixSink

ROOT = Path(__file__).resolve().parents[3]
PHOENIX_BIN = Path(os.environ.get("SLUICEGATE_PHOENIX", ROOT / ".tools/phoenix/bin/phoenix"))
ADMIN_SECRET = "phoenix-admin-secret-for-tests-0123456789"
"""A test value (never a real credential): the Phoenix started here accepts it as a bearer token."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Phoenix:
    def __init__(self) -> None:
        if not PHOENIX_BIN.exists():
            raise RuntimeError(f"{PHOENIX_BIN} is missing: run `make tools` (arize-phoenix in .tools/phoenix)")
        self.folder = tempfile.mkdtemp(prefix="phoenix-")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PHOENIX_WORKING_DIR": self.folder, "PHOENIX_HOST": "127.0.0.1",
               "PHOENIX_PORT": str(self.port), "PHOENIX_GRPC_PORT": str(_free_port()),
               "PHOENIX_TELEMETRY_ENABLED": "false", "PHOENIX_ENABLE_AUTH": "true",
               "PHOENIX_SECRET": "sluicegate-phoenix-jwt-secret-0123456789abc", "PHOENIX_ADMIN_SECRET": ADMIN_SECRET}
        self.log: list[str] = []
        ready = threading.Event()
        self.process = subprocess.Popen([str(PHOENIX_BIN), "serve"], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env)

        def drain() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:  # read for ever: a full pipe would stall the server
                self.log.append(line)
                if "Uvicorn running on" in line:  # the socket listens from here on
                    ready.set()

        threading.Thread(target=drain, name="phoenix-log", daemon=True).start()
        if not ready.wait(180):
            self.close()
            raise RuntimeError(f"Phoenix did not start: {self.log[-10:]}")

    def client(self):
        from phoenix.client import Client

        return Client(base_url=self.url, api_key=ADMIN_SECRET)

    def spans(self, project: str) -> list[dict]:
        """Every span of ``project`` as Phoenix stores it ([] when the project does not exist)."""
        client = self.client()
        if project not in {p["name"] for p in client.projects.list()}:
            return []
        return list(client.spans.get_spans(project_identifier=project, limit=1000))

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def phoenix() -> Iterator[Phoenix]:
    server = Phoenix()
    yield server
    server.close()


async def until(condition, what: str, timeout: float = 20.0) -> None:
    """Wait for ``condition`` under a deadline, between turns of the event loop (Phoenix inserts in batches)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)  # deliberate: polls a condition under a deadline


@pytest.fixture(autouse=True)
async def _close_shared_client() -> AsyncIterator[None]:
    yield
    await ArizePhoenixSink.shutdown()
