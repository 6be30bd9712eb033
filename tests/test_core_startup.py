"""``sluicegate serve`` start-up as a new user meets it: real subprocesses, a real refused port, a real PostgreSQL
server without the named database, a real port already taken.

Every failure is one line on stderr naming the thing (masked URL, port, key) and exits 2 without a traceback;
``Sluicegate listening on`` appears only once the port accepts connections.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_ADMIN_URL, closed_port, free_port, require_postgres

SECRET = "pw-" + uuid.uuid4().hex[:8]


def serve(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.Popen([sys.executable, "-m", "sluicegate", "serve", "--config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                            cwd=config.parent)


def config_with(tmp_path: Path, name: str, connect_timeout: float = 1, **general: Any) -> Path:
    raw = {"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m", "mock_response": "hi"}}],
           "general_settings": {"master_key": "sk-1234", **general},
           "sluicegate_settings": {"database_connect_timeout": connect_timeout}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_startup_failures_are_one_line_naming_the_cause(tmp_path: Path) -> None:
    require_postgres()
    admin = make_url(POSTGRES_ADMIN_URL)
    missing_db = admin.set(password=SECRET, database=f"sluicegate_missing_{uuid.uuid4().hex[:8]}")
    refused = f"postgresql://postgres:{SECRET}@127.0.0.1:{closed_port()}/sluicegate"
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    typo_config = tmp_path / "typo.yaml"
    typo_config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m", "mock_respone": "hi"}}],
        "general_settings": {"master_kye": "sk-1234"}, "litellm_settings": {"sucess_callback": ["file"]}}))
    cases = {
        "refused": (config_with(tmp_path, "refused", connect_timeout=4, database_url=refused), [],
                    ["connection refused", "retrying in", "gave up after 4 s", "database_connect_timeout",
                     f"postgres:***@127.0.0.1:{make_url(refused).port}/sluicegate"]),
        "missing database": (config_with(tmp_path, "missing", database_url=missing_db.render_as_string(False)), [],
                             ["the database does not exist", missing_db.database, "postgres:***@127.0.0.1:5432"]),
        "driver": (config_with(tmp_path, "driver", database_url=f"postgresql+psycopg://u:{SECRET}@127.0.0.1/x"), [],
                   ["the driver 'psycopg' is not installed (pip install psycopg[binary])", "u:***@127.0.0.1/x"]),
        "port taken": (config_with(tmp_path, "taken", database_url=f"sqlite+aiosqlite:///{tmp_path}/t.db"),
                       ["--port", str(taken_port)], [f"port {taken_port} is already in use"]),
        "typos": (typo_config, [], ["master_kye: unknown key; did you mean 'master_key'?",
                                    "sucess_callback: unknown key; did you mean 'success_callback'?",
                                    # found by the provider's check, in the same run
                                    "mock_respone: not a parameter of openai (did you mean 'mock_response'?)",
                                    "--allow-unknown-keys"]),
    }
    try:
        started = time.monotonic()
        processes = {name: serve(path, *(args or ["--port", str(free_port())]))
                     for name, (path, args, _) in cases.items()}
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=120)
            assert process.returncode == 2, (name, stdout, stderr)
            assert "Traceback" not in stderr and "listening" not in stdout, (name, stderr)
            assert SECRET not in stdout + stderr, name
            for fragment in cases[name][2]:
                assert fragment in stderr, (name, fragment, stderr)
            final = [line for line in stderr.splitlines() if "retrying in" not in line and "WARNING" not in line]
            assert len(final) <= (5 if name == "typos" else 1), (name, stderr)  # typos: one line per problem
        assert time.monotonic() - started < 110
    finally:
        taken.close()


def test_allow_unknown_keys_starts_with_warnings_and_listening_means_accepting(tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m", "mock_response": "hi"}}],
        "general_settings": {"master_kye": "sk-1234", "database_url": f"sqlite+aiosqlite:///{tmp_path}/a.db"}}))
    port = free_port()
    process = serve(config, "--port", str(port), "--allow-unknown-keys")
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "listening on" in line:
                # Connect right away, no waiting: the line promises the socket accepts and the app answers.
                answer = httpx.get(f"http://127.0.0.1:{port}/health/readiness", timeout=10)
                break
        else:
            pytest.fail(f"no 'listening on' line: {''.join(lines)} {process.stderr.read() if process.stderr else ''}")
        assert line.strip() == f"Sluicegate listening on http://127.0.0.1:{port}"
        assert "starting on" in "".join(lines)  # the banner came first, before the bind
        assert answer.status_code == 200
        checks = answer.json()["checks"]
        assert "no master key is configured" in checks["master_key"]["details"]
        generate = httpx.post(f"http://127.0.0.1:{port}/key/generate", json={}, timeout=10,
                              headers={"Authorization": "Bearer sk-1234"})
        assert generate.status_code == 401 and "no master key is configured" in generate.json()["error"]["message"]
        anonymous = httpx.get(f"http://127.0.0.1:{port}/key/list", timeout=10)
        assert anonymous.status_code == 401 and "no master key is configured" in anonymous.json()["error"]["message"]
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert "master_kye: unknown key; did you mean 'master_key'?" in stderr


def test_a_master_key_removes_the_no_master_key_notes(app_client: Any) -> None:
    """Negative control for the test above: with a master key, neither the 401 nor readiness mention its absence."""
    refused = app_client.post("/key/generate", json={}, headers={"Authorization": "Bearer sk-wrong"})
    assert refused.status_code == 401 and "no master key" not in refused.text
    assert "master_key" not in app_client.get("/health/readiness").json()["checks"]


def test_version_and_plugin_versions() -> None:
    import sluicegate

    plain = subprocess.run([sys.executable, "-m", "sluicegate", "--version"], capture_output=True, text=True,
                           timeout=60)
    assert plain.returncode == 0 and plain.stdout == f"sluicegate {sluicegate.__version__}\n"
    verbose = subprocess.run([sys.executable, "-m", "sluicegate", "--version", "-v"], capture_output=True,
                             text=True, timeout=60)
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout.startswith(f"sluicegate {sluicegate.__version__}\n")
    assert "langfuse_sink: sluicegate-langfuse-sink " in verbose.stdout
    assert "sluicegate.default_plugins.file_sink: sluicegate " in verbose.stdout
    bare = subprocess.run([sys.executable, "-m", "sluicegate"], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "a command is required" in bare.stderr  # negative control: no silent success


def test_a_database_that_comes_up_during_the_retries_is_used(tmp_path: Path, postgres_admin: Any) -> None:
    """Containers start out of order: the database port refuses at first, then (once the gateway has printed a
    retry line) starts answering; the same run goes on to serve."""
    import asyncio
    import threading

    require_postgres()
    admin = make_url(POSTGRES_ADMIN_URL)
    database = f"sluicegate_late_{uuid.uuid4().hex[:8]}"
    postgres_admin(f'CREATE DATABASE "{database}"')
    port = closed_port()
    url = admin.set(host="127.0.0.1", port=port, database=database).render_as_string(hide_password=False)
    config = config_with(tmp_path, "late", connect_timeout=60, database_url=url)
    loop = asyncio.new_event_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(admin.host or "127.0.0.1", admin.port or 5432)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    process = serve(config, "--port", str(free_port()))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert process.stderr is not None and process.stdout is not None
        for line in process.stderr:
            if "retrying in" in line:
                assert "connection refused" in line and f"127.0.0.1:{port}" in line
                break
        else:
            pytest.fail("no retry line before the process ended")
        # The database "comes up": a forwarder to the real server starts listening on the refused port.
        asyncio.run_coroutine_threadsafe(asyncio.start_server(forward, "127.0.0.1", port), loop).result(10)
        for line in process.stdout:
            if "listening on" in line:
                break
        else:
            pytest.fail(f"the gateway did not start: {process.stderr.read()}")
    finally:
        process.terminate()
        process.communicate(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_make_run_takes_host_port_and_config() -> None:
    root = Path(__file__).resolve().parent.parent
    dry = subprocess.run(["make", "-n", "-C", str(root), "run", "PORT=4321", "HOST=0.0.0.0", "CONFIG=my.yaml"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "sluicegate serve --config my.yaml --host 0.0.0.0 --port 4321" in dry.stdout
    default = subprocess.run(["make", "-n", "-C", str(root), "run"], capture_output=True, text=True, timeout=60)
    assert "sluicegate serve --config examples/config.yaml --host 127.0.0.1 --port 4000" in default.stdout
