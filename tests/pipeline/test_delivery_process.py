"""``sluicegate serve`` with the delivery process: serving workers append to their logs, one delivery process per host
owns the sink instances.

Real processes throughout: ``python -m sluicegate serve`` (its supervisor, uvicorn, spawned workers, the delivery
process) on loopback, the acme plugin really installed, a real HTTP receiver as the sink's destination. Processes
are found in ``/proc`` and killed with real signals.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sluicegate.testing.processes import cmdline as _cmdline
from sluicegate.testing.processes import descendants as _descendants
from sluicegate.testing.waiting import wait_until, wait_until_async

pytestmark = [pytest.mark.usefixtures("acme", "clean_env"),
              pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads processes from /proc")]

MASTER = "sk-master-pipeline-test"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
REQUESTS = 200  # four full acme batches (max_batch_size 50)
START = 120  # seconds a start-up may take on a loaded 2-core machine (five interpreters importing at once)


def _holds(pid: int, fragment: str) -> bool:
    """Whether process ``pid`` has a file open whose path contains ``fragment``."""
    try:
        return any(fragment in os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _delivery_pids(root: int) -> list[int]:
    return [p for p in _descendants(root) if _cmdline(p).rstrip().endswith("-m sluicegate.delivery")]


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _worker_pids(root: int) -> list[int]:
    return [p for p in _descendants(root) if "spawn_main" in _cmdline(p)]


def _config(tmp_path: Path, **delivery: Any) -> Path:
    cfg = {"model_list": [{"model_name": "mock", "litellm_params": {"model": "openai/m", "mock_response": "ok"}}],
           "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw.db"},
           "litellm_settings": {"callbacks": ["acme"]},
           "sluicegate_settings": {"change_poll_interval": 0.1,
                                   "delivery": {"spool_flush_interval": 0.1, "batch_interval": 0.01,
                                                "retry_base_delay": 0.02, "retry_max_delay": 0.05,
                                                "shutdown_grace": 2, **delivery}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(acme_path: Path, receiver: Any, dest: str) -> dict[str, str]:
    return {"PYTHONPATH": f"{acme_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "ACME_URL": f"{receiver.url}/dest/{dest}", "ACME_TOKEN": "tok-delivery-process"}


_FRESH = threading.local()


def _chat(url: str, content: str) -> int:
    # a new connection each time (no keep-alive), so the kernel hands requests to either worker; one client per
    # thread (building one costs ~50 ms of TLS set-up on a busy machine)
    client = getattr(_FRESH, "client", None)
    if client is None:
        client = _FRESH.client = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))
    return client.post(f"{url}/v1/chat/completions", headers=ADMIN, json={
        "model": "mock", "messages": [{"role": "user", "content": content}]}).status_code


def _sinks(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/-/sinks", headers=ADMIN, timeout=5).json()


def _contents(receiver: Any, dest: str) -> list[str]:
    return [e["messages"][0]["content"] for e in receiver.events(f"/dest/{dest}")]


async def test_two_workers_one_delivery_service_one_sink_instance_and_the_posts_of_one_worker(
        make_config, start, vars_for, receiver):
    """In process: two serving workers (two apps, each writing its own log) and one delivery service reading both.
    One acme instance delivers both workers' events, in full batches filled across workers: 2 workers make the
    POSTs 1 worker makes. The control: the same requests through two inline gateways, each with its own instance
    and its own partial batch."""
    cfg = make_config(litellm={"callbacks": ["acme"]}, delivery={"batch_interval": 30})
    cfg["litellm_settings"]["callbacks"] = []
    entry = [{"callback_name": "acme", "callback_vars": vars_for("shared")}]

    async def send(gateways: list[Any], key: str, total: int) -> None:
        for i in range(total):  # alternating: neither worker alone has a full batch's share in order
            assert (await gateways[i % len(gateways)].chat(key, f"e{i}")).status_code == 200

    # 130 events: two full batches and 30 left; alternating workers hold 65 each (one batch + 15)
    async with start(cfg, delivery="process") as first, start(cfg, delivery="worker") as second:
        key = await first.new_key(metadata={"logging": entry})
        await second.gateway.store.version()  # the key is in the shared database; the second worker reads it
        await send([first, second], key, 130)
        first.gateway.dispatcher.flush_spool()
        second.gateway.dispatcher.flush_spool()
        service = first.delivery
        service.pump()
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/shared")) == 100)
        assert len(service.tails) == 2 and all(t.events_read == 65 for t in service.tails.values())
        assert len(service.dispatcher.pool.slots) == 1  # one instance for both workers
        assert not first.gateway.dispatcher.probes.slots and not second.gateway.dispatcher.probes.slots
        assert [len(r.json()) for r in receiver.received("/dest/shared")] == [50, 50]
        for worker in (first, second):  # either worker shows the host's one instance, asked of the delivery service
            shown = (await worker.admin("GET", "/-/sinks")).json()
            assert shown["instances"] == 1 and shown["sinks"][0]["accepted"] == 130
            assert shown["delivery"]["healthy"] is True and shown["worker"]["submitted"] == 65
            assert "sluicegate_sink_instances 1\n" in (await worker.admin("GET", "/metrics")).text
            ready = (await worker.client.get("/health/readiness")).json()
            assert ready["checks"]["delivery"]["healthy"] is True
        assert await first.drain(5)
    two_workers = [len(r.json()) for r in receiver.received("/dest/shared")]
    assert two_workers == [50, 50, 30]

    # one worker, the same requests: the same POSTs
    cfg1 = make_config(litellm={"callbacks": []}, delivery={"batch_interval": 30})
    cfg1["general_settings"]["database_url"] += "-one"
    cfg1["sluicegate_settings"]["delivery"]["spool_dir"] = str(Path(cfg1["general_settings"]["database_url"]
                                                                    .split("///")[1]).parent / "spool-one")
    entry1 = [{"callback_name": "acme", "callback_vars": vars_for("one")}]
    async with start(cfg1, delivery="process") as only:
        key = await only.new_key(metadata={"logging": entry1})
        await send([only], key, 130)
        assert await only.drain(5)
    assert [len(r.json()) for r in receiver.received("/dest/one")] == two_workers

    # control: two inline gateways (what --delivery inline --workers 2 does): an instance and a partial batch each
    cfg2 = make_config(litellm={"callbacks": []}, delivery={"batch_interval": 30})
    cfg2["general_settings"]["database_url"] += "-inline"
    entry2 = [{"callback_name": "acme", "callback_vars": vars_for("inline")}]
    async with start(cfg2) as a, start(cfg2) as b:
        key = await a.new_key(metadata={"logging": entry2})
        await send([a, b], key, 130)
        assert len(a.gateway.dispatcher.pool.slots) == 1 and len(b.gateway.dispatcher.pool.slots) == 1
        assert await a.drain(5) and await b.drain(5)
    inline = sorted(len(r.json()) for r in receiver.received("/dest/inline"))
    assert sum(inline) == 130 and len(inline) > len(two_workers)  # [15, 15, 50, 50]: one POST more


def test_serve_runs_one_delivery_process_for_its_workers_with_one_sink_instance(
        tmp_path, acme_path, receiver, gateway_process):
    """``sluicegate serve --workers 2``: the supervisor, two workers, one delivery process, its health in
    readiness, one sink instance, full batches only (a long linger) whichever worker accepted each event."""
    gateway = gateway_process(_config(tmp_path, batch_interval=30), workers=2,
                              env=_env(acme_path, receiver, "shared"), wait=False).wait_ready(START)
    root = gateway.proc.pid
    assert "sluicegate.delivery.supervisor" in _cmdline(root)
    (delivery,) = _delivery_pids(root)
    assert len(_worker_pids(root)) == 2
    # named for ps -e / top / pgrep
    assert [_comm(p) for p in (root, delivery, *_worker_pids(root))] == ["sg-supervisor", "sg-delivery",
                                                                        "sg-worker", "sg-worker"]
    ready = httpx.get(f"{gateway.url}/health/readiness", timeout=5).json()
    assert ready["checks"]["delivery"]["healthy"] is True
    assert ready["checks"]["delivery"]["details"]["pid"] == delivery
    # one worker answering is not both started: each opens its log when its app starts, and the delivery process
    # finds it within half a second
    wait_until(lambda: len(_sinks(gateway.url)["delivery"]["logs"]) == 2, timeout=START, what="both workers' logs")
    with concurrent.futures.ThreadPoolExecutor(8) as clients:  # concurrent, so both workers take requests
        assert set(clients.map(lambda i: _chat(gateway.url, f"e{i}"), range(REQUESTS))) == {200}
    expected = {f"e{i}" for i in range(REQUESTS)}
    assert receiver.wait_for(lambda: set(_contents(receiver, "shared")) == expected, timeout=15)
    sinks = _sinks(gateway.url)
    assert sinks["instances"] == 1 and sinks["sinks"][0]["accepted"] == REQUESTS
    logs = sinks["delivery"]["logs"]
    # every event read once, from the workers' logs (which worker accepted a connection is the kernel's choice:
    # usually both, but one may take them all)
    assert sum(entry["events_read"] for entry in logs.values()) == REQUESTS and set(logs) <= {"w0", "w1"}
    # Full batches only, four of them. A POST slower than acme's 2 s send timeout on a loaded machine is sent again
    # (at least once): the receiver then holds that batch twice, so batches are counted by what they hold.
    batches = {frozenset(e["messages"][0]["content"] for e in r.json()) for r in receiver.received("/dest/shared")}
    assert len(batches) == REQUESTS // 50 and all(len(batch) == 50 for batch in batches)
    spool = tmp_path / "sluicegate-spool"
    # one spool, two logs (and the workers' metrics snapshots)
    assert sorted(p.name for p in spool.iterdir() if p.is_dir()) == ["metrics", "p0", "w0", "w1"]


@pytest.mark.parametrize("spool", [True, False], ids=["spool", "no-spool-control"])
def test_sigkill_of_the_delivery_process_under_load_loses_nothing_accepted(
        spool, tmp_path, acme_path, receiver, gateway_process):
    """The sink is down (503) while requests are accepted and the delivery process is killed; it is restarted
    with backoff and, once the sink is back, everything accepted arrives. Its health shows in readiness, including
    while it does not answer (stopped). Without the spool what it held in memory is gone (the control)."""
    receiver.behave("/dest/kill", status=503)
    gateway = gateway_process(_config(tmp_path, spool=spool), workers=2, env=_env(acme_path, receiver, "kill"),
                              wait=False).wait_ready(START)
    root = gateway.proc.pid
    (first,) = _delivery_pids(root)

    settled = [f"a-{i}" for i in range(30)]
    for content in settled:
        assert _chat(gateway.url, content) == 200
    # read by the delivery process, held there (memory and its spool): the sink refuses
    wait_until(lambda: _sinks(gateway.url)["sinks"] and _sinks(gateway.url)["sinks"][0]["accepted"] >= 30,
               timeout=10, what="the delivery process read the settled events")
    wait_until(lambda: _sinks(gateway.url)["sinks"][0]["spool_unwritten"] == 0, timeout=10, what="spool written")

    # readiness follows the delivery process: a stopped one does not answer
    os.kill(first, signal.SIGSTOP)
    try:
        stopped = httpx.get(f"{gateway.url}/health/readiness", timeout=10)
        assert stopped.status_code == 503 and stopped.json()["checks"]["delivery"]["healthy"] is False
    finally:
        os.kill(first, signal.SIGCONT)
    assert httpx.get(f"{gateway.url}/health/readiness", timeout=10).status_code == 200

    finished: list[str] = []
    stop = threading.Event()

    def loader(worker: int) -> None:
        i = 0
        while not stop.is_set():
            content = f"b-{worker}-{i}"
            try:
                if _chat(gateway.url, content) == 200:
                    finished.append(content)
            except httpx.HTTPError:
                return
            i += 1

    threads = [threading.Thread(target=loader, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(finished) >= 60, timeout=20, what="load")
        os.kill(first, signal.SIGKILL)
        count = len(finished)
        wait_until(lambda: len(finished) >= count + 60, timeout=20, what="requests accepted while it restarts")
        wait_until(lambda: _delivery_pids(root) and _delivery_pids(root)[0] != first, timeout=20,
                   what="the delivery process restarted")
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    health = httpx.get(f"{gateway.url}/health/readiness", timeout=10).json()["checks"]["delivery"]
    wait_until(lambda: httpx.get(f"{gateway.url}/health/readiness", timeout=10).json()["checks"]["delivery"]
               ["healthy"], timeout=20, what="the restarted delivery process answers")
    health = httpx.get(f"{gateway.url}/health/readiness", timeout=10).json()["checks"]["delivery"]
    assert health["details"]["restarts"] == 1 and health["details"]["pid"] != first

    accepted = settled + finished
    receiver.behave("/dest/kill", status=200)
    if spool:
        wait_until(lambda: set(accepted) <= set(_contents(receiver, "kill")), timeout=30,
                   what="every accepted event delivered after the restart")
        assert set(_contents(receiver, "kill")) <= set(accepted)
    else:
        wait_until(lambda: set(finished[-20:]) <= set(_contents(receiver, "kill")), timeout=30,
                   what="events accepted after the restart delivered")
        assert not set(settled) & set(_contents(receiver, "kill"))  # held in the killed process's memory only


def test_a_hung_delivery_process_is_killed_and_restarted_with_nothing_lost(
        tmp_path, acme_path, receiver, gateway_process):
    """A stopped (SIGSTOP: alive, not answering) delivery process is found by the supervisor's pings over its
    status socket, killed after ``watchdog_misses`` misses in a row and restarted; what was accepted before and
    while it hung arrives. The control: a healthy one, pinged just as often for longer than that, is left alone."""
    interval, misses = 0.2, 3
    gateway = gateway_process(_config(tmp_path, watchdog_interval=interval, watchdog_timeout=0.2,
                                      watchdog_misses=misses),
                              env=_env(acme_path, receiver, "hung"), wait=False).wait_ready(START)
    root = gateway.proc.pid

    def delivery() -> dict[str, Any]:
        return httpx.get(f"{gateway.url}/health/readiness", timeout=10).json()["checks"]["delivery"]

    # with one worker the first delivery process is forked by `sluicegate serve` (its command line is serve's)
    first = delivery()["details"]["pid"]
    assert first in _descendants(root)
    assert not any("-m uvicorn" in _cmdline(pid) for pid in _descendants(root))  # the worker was forked too
    # ... so ps -e / top / pgrep tell them apart by name
    assert sorted(_comm(pid) for pid in [root, *_descendants(root)]) == ["sg-delivery", "sg-supervisor", "sg-worker"]

    before = [f"before-{i}" for i in range(20)]
    for content in before:
        assert _chat(gateway.url, content) == 200
    assert receiver.wait_for(lambda: set(before) <= set(_contents(receiver, "hung")), timeout=15)
    # control: answering, it outlives several times misses x interval of pings
    wait_until(lambda: delivery()["healthy"] and delivery()["details"]["uptime"] > 3 * misses * interval,
               timeout=20, what="the delivery process running past a few watchdog periods")
    assert delivery()["details"]["pid"] == first and delivery()["details"]["restarts"] == 0
    assert first in _descendants(root) and not _delivery_pids(root)  # not restarted: no new interpreter
    assert "health pings" not in gateway.stderr

    os.kill(first, signal.SIGSTOP)
    try:
        during = [f"during-{i}" for i in range(20)]
        for content in during:  # accepted: the worker appends to its log whatever the delivery process does
            assert _chat(gateway.url, content) == 200
        wait_until(lambda: _delivery_pids(root) and _delivery_pids(root) != [first], timeout=30,
                   what="a new delivery process in place of the hung one")
        wait_until(lambda: not Path(f"/proc/{first}").exists(), timeout=10, what="the hung process gone")
    finally:
        if Path(f"/proc/{first}").exists():
            os.kill(first, signal.SIGCONT)
    after = [f"after-{i}" for i in range(20)]
    for content in after:
        assert _chat(gateway.url, content) == 200
    sent = before + during + after
    wait_until(lambda: set(sent) <= set(_contents(receiver, "hung")), timeout=30,
               what="every accepted event delivered by the restarted delivery process")
    assert set(_contents(receiver, "hung")) <= set(sent)
    health = delivery()
    assert health["healthy"] and health["details"]["restarts"] == 1 and health["details"]["pid"] != first
    line = f"the delivery process (pid {first}) did not answer {misses} health pings in a row"
    assert sum(line in row for row in gateway.stderr.splitlines()) == 1, gateway.stderr


def test_sigkill_of_a_worker_loses_at_most_one_flush_interval(tmp_path, acme_path, receiver, gateway_process):
    flush = 0.1
    gateway = gateway_process(_config(tmp_path, spool_flush_interval=flush), workers=2,
                              env=_env(acme_path, receiver, "worker"), wait=False).wait_ready(START)
    root = gateway.proc.pid
    finished: list[tuple[str, float]] = []
    stop = threading.Event()

    def loader(worker: int) -> None:
        i = 0
        while not stop.is_set():
            content = f"w-{worker}-{i}"
            try:
                if _chat(gateway.url, content) == 200:
                    finished.append((content, time.monotonic()))
            except httpx.HTTPError:  # a request the killed worker was serving: not accepted
                pass
            i += 1

    threads = [threading.Thread(target=loader, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(finished) >= 100, timeout=20, what="load")
        # the worker that is serving (the kernel may hand every connection to one): the one writing the busiest log,
        # once the delivery process has found the logs and read from them (it looks every half second)
        wait_until(lambda: any(e["events_read"] for e in _sinks(gateway.url)["delivery"]["logs"].values()),
                   timeout=20, what="the delivery process reading the workers' logs")
        logs = _sinks(gateway.url)["delivery"]["logs"]
        busiest = max(logs, key=lambda name: logs[name]["events_read"])
        (victim,) = [p for p in _worker_pids(root) if _holds(p, f"/{busiest}/")]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        count = len(finished)
        wait_until(lambda: len(finished) >= count + 50, timeout=20, what="load after the kill")
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    delivered_all = [c for c, _ in finished]
    wait_until(lambda: set(c for c, t in finished if t > killed_at + 1) <= set(_contents(receiver, "worker")),
               timeout=20, what="events accepted after the kill delivered")
    wait_until(lambda: _sinks(gateway.url)["pending"] == 0, timeout=20, what="delivery settled")
    received = set(_contents(receiver, "worker"))
    lost = [(c, t) for c, t in finished if c not in received]
    assert all(killed_at - t <= flush + 0.1 for _, t in lost), (len(lost), len(finished))
    assert received <= set(delivered_all)
    assert logs[busiest]["events_read"] > 0  # the killed worker had logged events before the kill
    print(f"worker SIGKILL: accepted {len(finished)}, lost {len(lost)} (flush interval {flush}s)")


async def test_a_destination_whose_last_route_is_gone_is_flushed_and_closed(make_config, start, vars_for, receiver):
    """In process: after ``disable_logging`` the delivery service learns of the change through the change counter,
    delivers what the team's destination still holds (a long linger: nothing would go for 30 s) and closes its
    sink instance; the other team's destination, still routed, keeps its instance (the control)."""
    cfg = make_config(delivery={"batch_interval": 30})
    async with start(cfg, delivery="process") as gw:
        for team in ("leaving", "staying"):
            assert (await gw.admin("POST", "/team/new", json={"team_id": team})).status_code == 200
            assert (await gw.admin("POST", f"/team/{team}/callback", json={
                "callback_name": "acme", "callback_vars": vars_for(team)})).status_code == 200
        keys = {team: await gw.new_key(team_id=team) for team in ("leaving", "staying")}
        for i in range(3):
            for team, key in keys.items():
                assert (await gw.chat(key, f"{team}-{i}")).status_code == 200
        service = gw.delivery
        gw.gateway.dispatcher.flush_spool()
        await wait_until_async(lambda: service.pump() or len(service.dispatcher.pool.slots) == 2, timeout=10,
                               what="both destinations built in the delivery service")
        assert receiver.events("/dest/") == []  # lingering
        assert (await gw.admin("POST", "/team/leaving/disable_logging")).status_code == 200
        await wait_until_async(lambda: len(service.dispatcher.pool.slots) == 1, timeout=10,
                               what="the unrouted destination closed")
        assert [e["messages"][0]["content"] for e in receiver.events("/dest/leaving")] == [f"leaving-{i}"
                                                                                          for i in range(3)]
        assert receiver.events("/dest/staying") == [] and service.retired == 1  # still lingering, still open
        (left,) = service.dispatcher.pool.slots.values()
        assert left.queue and not left.closed


async def test_key_health_probes_from_the_worker_without_a_delivery_instance(make_config, start, vars_for, receiver):
    """``/key/health`` in a serving worker builds the key's sink for the probe only: the probe reaches the
    destination, and no event goes anywhere (the delivery service builds nothing for it). Control: a wrong
    token is reported unhealthy."""
    receiver.behave("/dest/bad", status=401)
    async with start(make_config(), delivery="process") as gw:
        good = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("good")}]})
        bad = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("bad")}]})
        answer = (await gw.client.post("/key/health", headers={"Authorization": f"Bearer {good}"})).json()
        assert answer["key"] == "healthy"
        answer = (await gw.client.post("/key/health", headers={"Authorization": f"Bearer {bad}"})).json()
        assert answer["key"] == "unhealthy"
        assert len(gw.gateway.dispatcher.probes.slots) == 2
        assert gw.delivery.dispatcher.pool.slots == {} and receiver.events("/dest/") == []
