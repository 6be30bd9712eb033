"""``sluicegate serve --workers N``: N real worker processes behind one port, coherent, stopped together.

Everything here runs the real CLI in a subprocess (uvicorn supervisor and spawned workers) on loopback.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
import yaml
from sluicegate.testing.processes import cmdline as _cmdline
from sluicegate.testing.processes import descendants as _descendants
from sluicegate.testing.waiting import wait_until

MASTER_KEY = "sk-master-workers-0123456789"

WORKERS = 2
REQUESTS = 40  # fresh connections each: the chance that one of 2 workers gets none is 2 * 0.5**40


def _chat(url: str, key: str) -> int:
    # a new client each time: a new connection, so the kernel may hand it to either worker
    with httpx.Client(timeout=10) as client:
        return client.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "gpt-mock", "messages": [{"role": "user", "content": "hi"}]}).status_code


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads worker processes from /proc")
@pytest.mark.parametrize("delivery", ["process", "inline"])
def test_workers_serve_one_port_see_each_others_changes_and_stop_together(tmp_path: Path, gateway_process,
                                                                         delivery: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "gpt-mock", "litellm_params": {"model": "openai/mock-model",
                                                                     "mock_response": "hello from a worker"}}],
        "general_settings": {"master_key": MASTER_KEY,
                             "database_url": f"sqlite+aiosqlite:///{tmp_path / 'workers.db'}"}}))
    gateway = gateway_process(config, workers=WORKERS, delivery=delivery, wait=False).wait_ready(120)
    supervisor = gateway.proc.pid

    # the validating CLI process replaced itself: inline, with a bare uvicorn supervisor; with the delivery process,
    # with the small parent of uvicorn (whose command line it carries) and of the one delivery process
    assert "-m uvicorn sluicegate.cli:app_factory" in _cmdline(supervisor)
    assert f"--workers {WORKERS}" in _cmdline(supervisor)
    assert ("sluicegate.delivery.supervisor" in _cmdline(supervisor)) == (delivery == "process")
    family = _descendants(supervisor)
    workers = [p for p in family if "spawn_main" in _cmdline(p)]
    assert len(workers) == WORKERS
    delivering = [p for p in family if _cmdline(p).rstrip().endswith("-m sluicegate.delivery")]
    assert len(delivering) == (1 if delivery == "process" else 0)
    # inline, each worker delivers through its own spool (and sink instances); else one delivery process's spool
    # and a log per worker; in both, the workers' metrics snapshots (sluicegate.worker_metrics)
    expected = {"p0", "w0", "w1", "metrics"} if delivery == "process" else {"p0", "p1", "metrics"}
    wait_until(lambda: {p.name for p in (tmp_path / "sluicegate-spool").iterdir() if p.is_dir()} == expected,
               timeout=60, what=f"the spool directories {sorted(expected)} (every worker started)")

    with httpx.Client(timeout=10) as admin:
        created = admin.post(f"{gateway.url}/key/generate", headers={"Authorization": f"Bearer {MASTER_KEY}"},
                             json={"key_alias": "both-workers"})
        assert created.status_code == 200, created.text
        key = created.json()["key"]
        # created through one worker, accepted by every one
        assert [_chat(gateway.url, key) for _ in range(REQUESTS)] == [200] * REQUESTS

        deleted = admin.post(f"{gateway.url}/key/delete", headers={"Authorization": f"Bearer {MASTER_KEY}"},
                             json={"keys": [key]})
        assert deleted.status_code == 200, deleted.text
    # deleted through one worker: refused by every one once it polled the change counter (0.25 s by default)
    wait_until(lambda: [_chat(gateway.url, key) for _ in range(REQUESTS)] == [401] * REQUESTS, timeout=10,
             what="every worker refuses the deleted key")

    os.kill(supervisor, signal.SIGTERM)
    gateway.proc.wait(30)
    wait_until(lambda: not any(Path(f"/proc/{p}").exists() and _cmdline(p) for p in workers + delivering),
             timeout=15, what="the workers (and the delivery process) to exit with the supervisor")
