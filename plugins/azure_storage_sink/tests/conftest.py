"""Azurite, Microsoft's storage emulator (the npm package ``azurite``, installed by ``make tools``), started once
per test session on a loopback port with two accounts, and read back with the official SDK's sync client.

Azurite checks SharedKey signatures and SAS tokens like the service, answers ``AuthenticationFailed`` (403) to a
wrong key and ``ContainerNotFound`` (404) to a missing container. It keeps data in a temporary folder, so the
outage tests can stop it and start it again on the same port with the blobs still there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

from sluicegate_azure_storage_sink.sink import AzureStorageSink

ROOT = Path(__file__).resolve().parents[3]
AZURITE_BIN = Path(os.environ.get("SLUICEGATE_AZURITE", ROOT / ".tools/azurite/node_modules/.bin/azurite-blob"))

# Two accounts of our own (AZURITE_ACCOUNTS replaces the emulator's built-in one); test keys, not secrets.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "c2x1aWNlZ2F0ZS1henVyaXRlLXRlc3Qta2V5LWFjY291bnQtb25lLTAxMjM0NTY3ODlhYmNkZWY="
OTHER_ACCOUNT = "teamaccount2"
OTHER_KEY = "c2x1aWNlZ2F0ZS10ZXN0LWtleS1mb3ItdGVhbS1hY2NvdW50LTItbm90LWEtc2VjcmV0ISE="


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Azurite:
    """The real emulator as a child process; :meth:`stop` and :meth:`start` make an outage on the same port."""

    def __init__(self) -> None:
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"{AZURITE_BIN} is missing: run `make tools` (npm install azurite)")
        self.port = _free_port()
        self.folder = tempfile.mkdtemp(prefix="azurite-")
        self.process: subprocess.Popen[str] | None = None
        self.start()

    def url(self, account: str = ACCOUNT) -> str:
        return f"http://127.0.0.1:{self.port}/{account}"

    def start(self) -> None:
        listening = threading.Event()
        log: list[str] = []
        env = {**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{ACCOUNT_KEY};{OTHER_ACCOUNT}:{OTHER_KEY}"}
        self.process = subprocess.Popen(
            [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", self.folder,
             "--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

        def drain(process: subprocess.Popen[str]) -> None:
            assert process.stdout is not None
            for line in process.stdout:  # read for ever: a full pipe would stall the emulator
                log.append(line)
                if "successfully listens" in line:
                    listening.set()

        threading.Thread(target=drain, args=(self.process,), name="azurite-log", daemon=True).start()
        if not listening.wait(30):
            self.stop()
            raise RuntimeError(f"Azurite did not start: {log[-5:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def service(self, account: str = ACCOUNT, key: str = ACCOUNT_KEY):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.url(account), credential={"account_name": account, "account_key": key})

    def new_container(self, stem: str, account: str = ACCOUNT, key: str = ACCOUNT_KEY) -> str:
        name = f"{stem}-{uuid.uuid4().hex[:10]}"
        self.service(account, key).create_container(name)
        return name

    def blobs(self, container: str, account: str = ACCOUNT, key: str = ACCOUNT_KEY) -> dict[str, bytes]:
        client = self.service(account, key).get_container_client(container)
        return {b.name: client.download_blob(b.name).readall() for b in client.list_blobs()}

    def events(self, container: str, account: str = ACCOUNT, key: str = ACCOUNT_KEY) -> list[dict]:
        return [msgspec.json.decode(line) for data in self.blobs(container, account, key).values()
                for line in data.splitlines()]

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    server = Azurite()
    yield server
    server.close()


@pytest.fixture(autouse=True)
async def _close_shared_clients() -> AsyncIterator[None]:
    yield
    await AzureStorageSink.shutdown()


async def until(condition, what: str, timeout: float = 15.0) -> None:
    """Wait for ``condition`` under a deadline, between turns of the event loop the gateway runs on."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # deliberate: polls a condition under a deadline
