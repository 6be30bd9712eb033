"""Issue 21 #7: reading ``gcs_path_service_account`` never stalls the gateway and never quotes the file.

Before, the key file was opened with a plain blocking ``open()`` on the event loop when a callback was written:
a named pipe (FIFO) nobody writes to stopped every request of the gateway, ``/dev/zero`` or a huge file was read
up to 1 MiB, and a JSON file's ``type`` value was echoed in the 422 (a key file is a secret; so is whatever
file was named by mistake). Now only a regular file is opened (without blocking, checked again with ``fstat``),
at most 64 KiB is read, the read runs on a thread of its own with a timeout, and no message quotes the file.

The gateway is real (uvicorn on loopback, in the test's own event loop) and so are the files: a FIFO made with
``os.mkfifo``, ``/dev/zero``, a sparse 10 MB file, a symlink to a FIFO. A ticker task on the same loop records
the longest gap between its ticks: a blocked loop shows as a gap of seconds. So that the old code fails these
tests instead of hanging them, a rescue thread opens each FIFO for writing after ``RESCUE_AFTER`` seconds,
which lets a reader stuck in ``open()`` go on (it then reads end-of-file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sluicegate.config import ConfigError
from sluicegate.testing.events import make_event
from sluicegate.sinks.vars import decode_vars
from sluicegate.testing.gateway import running_gateway
from sluicegate_gcs_sink.sink import GcsBucketSink, GcsBucketVars

MASTER = "sk-master-key-file-test"
RESCUE_AFTER = 4.0
"""Seconds after which a FIFO still open for reading is opened for writing (releasing a blocked reader)."""
MAX_LOOP_GAP = 1.0
"""The longest the event loop may go without running the ticker while a key file is checked."""
SECRET_TYPE = "sk-live-7c1e0b9d4a-SECRET"


def _config(tmp_path: Path, litellm: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "mock", "litellm_params": {"model": "openai/mock-1",
                                                                 "mock_response": "ok"}}],
        "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw.db"},
        "litellm_settings": litellm or {},
    }


def _service_account_file(path: Path, **info: Any) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({"type": "service_account", "private_key_id": "k1", "private_key": pem,
                                "client_email": "sa@p.iam.gserviceaccount.com",
                                "token_uri": "http://127.0.0.1:9/token", **info}))
    return path


@contextlib.contextmanager
def fifo(path: Path) -> Iterator[Path]:
    """A named pipe nobody writes to; from ``RESCUE_AFTER`` s on, readers blocked on it are released."""
    os.mkfifo(path)
    done = threading.Event()

    def rescue() -> None:
        if done.wait(RESCUE_AFTER):
            return
        while True:  # every reader that blocks from now on, until the block ends (the old code reopens it)
            with contextlib.suppress(OSError):  # ENXIO: no reader has it open, nothing to release
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            if done.wait(0.05):
                return

    thread = threading.Thread(target=rescue, name="fifo-rescue", daemon=True)
    thread.start()
    try:
        yield path
    finally:
        done.set()
        thread.join()


class LoopWatch:
    """Ticks on the running loop every 10 ms; ``longest_gap`` is the longest time between two ticks."""

    def __init__(self) -> None:
        self.longest_gap = 0.0
        self.ticks = 0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)  # the tick interval of the probe, not a wait for a condition
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            self.ticks += 1
            last = now


@contextlib.asynccontextmanager
async def watched_loop() -> AsyncIterator[LoopWatch]:
    watch = LoopWatch()
    task = asyncio.get_running_loop().create_task(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _add_gcs_callback(gw: Any, team_id: str, key_file: Path | str) -> Any:
    assert (await gw.admin("POST", "/team/new", json={"team_id": team_id})).status_code == 200
    return await gw.admin("POST", f"/team/{team_id}/callback", json={
        "callback_name": "gcs_bucket",
        "callback_vars": {"gcs_bucket_name": "team-logs", "gcs_path_service_account": str(key_file)}})


def _assert_refused(response: Any, reason: str, secret_parts: tuple[str, ...] = ()) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "callback_vars.gcs_path_service_account", error
    assert reason in error["message"], error["message"]
    for part in secret_parts:
        assert part not in response.text, f"the answer quotes {part!r}"


async def test_a_fifo_key_file_is_refused_while_the_loop_keeps_serving(tmp_path: Path) -> None:
    async with running_gateway(_config(tmp_path)) as gw:
        with fifo(tmp_path / "key.json") as path:
            async with watched_loop() as watch:
                started = time.monotonic()
                write = asyncio.ensure_future(_add_gcs_callback(gw, "team-fifo", path))
                # Another request, sent while the callback is being checked, is answered too.
                alive = await asyncio.wait_for(gw.client.get("/health/liveliness"), 10)
                response = await asyncio.wait_for(write, 10)
                elapsed = time.monotonic() - started
        assert watch.longest_gap < MAX_LOOP_GAP, f"the event loop stalled for {watch.longest_gap:.1f}s"
        assert watch.ticks > 0
        assert elapsed < RESCUE_AFTER, f"the refusal took {elapsed:.1f}s"
        assert alive.status_code == 200
        _assert_refused(response, "not a regular file", (str(tmp_path),))


async def test_a_symlink_to_a_fifo_is_refused_without_stalling(tmp_path: Path) -> None:
    async with running_gateway(_config(tmp_path)) as gw:
        with fifo(tmp_path / "pipe") as target:
            link = tmp_path / "key.json"
            link.symlink_to(target)
            async with watched_loop() as watch:
                response = await asyncio.wait_for(_add_gcs_callback(gw, "team-link", link), 10)
        assert watch.longest_gap < MAX_LOOP_GAP, f"the event loop stalled for {watch.longest_gap:.1f}s"
        _assert_refused(response, "not a regular file")


async def test_devices_and_huge_files_are_refused_without_reading_them(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    with huge.open("wb") as handle:
        handle.truncate(10 * 1024 * 1024)  # sparse: 10 MB that cost no disk
    grown = tmp_path / "grown.json"
    grown.write_text('{"type": "service_account", "padding": "' + "x" * 70_000 + '"}')
    async with running_gateway(_config(tmp_path)) as gw:
        async with watched_loop() as watch:
            zero = await _add_gcs_callback(gw, "team-zero", "/dev/zero")
            big = await _add_gcs_callback(gw, "team-huge", huge)
            over = await _add_gcs_callback(gw, "team-over", grown)
        _assert_refused(zero, "not a regular file")
        _assert_refused(big, "larger than 64 KiB")
        _assert_refused(over, "larger than 64 KiB", ("padding", "xxxx"))
        assert watch.longest_gap < MAX_LOOP_GAP, f"the event loop stalled for {watch.longest_gap:.1f}s"


async def test_errors_never_quote_the_file(tmp_path: Path) -> None:
    typed = tmp_path / "typed.json"
    typed.write_text(json.dumps({"type": SECRET_TYPE, "client_email": "x@y"}))
    almost = _service_account_file(tmp_path / "almost.json", client_email="", private_key_id=SECRET_TYPE)
    not_json = tmp_path / "not.json"
    not_json.write_text(f"{SECRET_TYPE}\n")
    async with running_gateway(_config(tmp_path)) as gw:
        _assert_refused(await _add_gcs_callback(gw, "team-typed", typed), "not a service-account key file",
                        (SECRET_TYPE, "sk-live", str(tmp_path)))
        _assert_refused(await _add_gcs_callback(gw, "team-almost", almost), "lacks client_email",
                        (SECRET_TYPE, "PRIVATE KEY", str(tmp_path)))
        _assert_refused(await _add_gcs_callback(gw, "team-text", not_json), "not valid JSON",
                        (SECRET_TYPE, str(tmp_path)))


async def test_a_real_service_account_file_is_accepted(tmp_path: Path) -> None:
    key_file = _service_account_file(tmp_path / "sa.json")
    async with running_gateway(_config(tmp_path)) as gw:
        response = await _add_gcs_callback(gw, "team-good", key_file)
        assert response.status_code == 200, response.text


async def test_a_key_file_swapped_for_a_fifo_fails_health_and_send_without_stalling(tmp_path: Path) -> None:
    """The file was fine when written, then became a FIFO: the health check and a send (which reload the file on
    the sink's threads) report it at once instead of parking a thread for ever or timing out."""
    key_file = _service_account_file(tmp_path / "sa.json")
    sink = GcsBucketSink(decode_vars(GcsBucketVars, {"gcs_bucket_name": "team-logs",
                                                     "gcs_path_service_account": str(key_file)}))
    key_file.unlink()
    try:
        with fifo(key_file):
            async with watched_loop() as watch:
                started = time.monotonic()
                health = await asyncio.wait_for(sink.health_check(), 10)
                with pytest.raises(Exception) as failed:  # noqa: PT011 - the sink's own error type is not the point
                    await asyncio.wait_for(sink.send([make_event()]), 10)
                elapsed = time.monotonic() - started
    finally:
        await sink.aclose()
        await GcsBucketSink.shutdown()
    assert not health.healthy and health.error_kind == "config", health
    assert "not a regular file" in health.details and str(tmp_path) not in health.details
    assert "not a regular file" in str(failed.value) and str(tmp_path) not in str(failed.value)
    assert elapsed < RESCUE_AFTER, f"health and send took {elapsed:.1f}s"
    assert watch.longest_gap < MAX_LOOP_GAP


async def test_config_yaml_naming_a_fifo_fails_start_up_at_once(tmp_path: Path) -> None:
    with fifo(tmp_path / "key.json") as path:
        team = {"team_id": "team-yaml", "callbacks": ["gcs_bucket"],
                "callback_vars": {"gcs_bucket_name": "team-logs", "gcs_path_service_account": str(path)}}
        started = time.monotonic()
        with pytest.raises(ConfigError) as refused:
            async with running_gateway(_config(tmp_path, {"default_team_settings": [team]})):
                pass
        elapsed = time.monotonic() - started
    problem = "\n".join(refused.value.problems)
    assert "litellm_settings.default_team_settings[0]" in problem and "not a regular file" in problem, problem
    assert elapsed < RESCUE_AFTER, f"start-up took {elapsed:.1f}s to refuse the FIFO"
