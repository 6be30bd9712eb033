"""One ``/metrics`` for ``sluicegate serve --workers N`` (:mod:`sluicegate.worker_metrics`): every worker publishes
its series to its own file, the worker scraped merges the others' in; a dead worker's counts stay.

The first tests run real processes (``python -m sluicegate serve --workers 2``, workers found in ``/proc`` and
killed with real signals); the others drive :class:`WorkerMetrics` objects over real files in one process, as two
workers would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import httpx
import msgspec
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sluicegate.events import LogEvent, LogMetadata
from sluicegate.metrics import SNAPSHOT_STEP, RequestMetrics, _array_header, _Wire
from sluicegate.testing.processes import cmdline, descendants
from sluicegate.testing.waiting import wait_until, wait_until_async
from sluicegate.worker_metrics import WorkerMetrics, clear_stale

MASTER = "sk-master-worker-metrics"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
START = 120  # seconds a start-up may take on a loaded 2-core machine
TOTAL = "litellm_proxy_total_requests_metric_total"


def _worker_pids(root: int) -> list[int]:
    return [p for p in descendants(root) if "spawn_main" in cmdline(p)]


_FRESH = threading.local()


def _client() -> httpx.Client:
    # a new connection each time (no keep-alive), so the kernel hands requests and scrapes to either worker
    client = getattr(_FRESH, "client", None)
    if client is None:
        client = _FRESH.client = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))
    return client


def _chat(url: str, content: str) -> int:
    return _client().post(f"{url}/v1/chat/completions", headers=ADMIN, json={
        "model": "mock", "messages": [{"role": "user", "content": content}]}).status_code


def _scraped_total(url: str) -> float:
    text = _client().get(f"{url}/metrics", headers=ADMIN).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == TOTAL)


def _published(directory: Path) -> list[int]:
    """Requests in each worker's snapshot file, read as the other workers read them."""
    decode = RequestMetrics().decode
    return [sum(one.requests for _, one in decode(path.read_bytes()).series)
            for path in sorted(directory.glob("m*.snap"))]


def _config(tmp_path: Path) -> Path:
    cfg = {"model_list": [{"model_name": "mock", "litellm_params": {"model": "openai/m", "mock_response": "ok"}}],
           "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw.db"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize("delivery", ["process", "inline"])
def test_a_scrape_of_either_worker_counts_every_workers_requests_and_a_killed_workers_stay(
        delivery, tmp_path, gateway_process):
    snapshots = tmp_path / "sluicegate-spool" / "metrics"
    snapshots.mkdir(parents=True)
    (snapshots / "m0.lock").touch()
    earlier = RequestMetrics()
    for i in range(7):
        earlier.observe(_event(f"earlier-{i}"))
    (snapshots / "m0.snap").write_bytes(earlier.snapshot({}, 0.0))  # an earlier run's: cleared at start
    gateway = gateway_process(_config(tmp_path), workers=2, delivery=delivery)
    workers = _worker_pids(gateway.proc.pid)
    assert len(workers) == 2
    # each worker publishes once started: wait for both, so that both take requests
    wait_until(lambda: len(_published(snapshots)) == 2, timeout=START, what="both workers started")
    # requests on fresh connections, ten at a time, until both workers have taken some (the kernel hands each
    # connection to whichever worker accepts first, so one worker may take a whole quiet burst)
    sent = 0

    def both_took_some() -> bool:
        nonlocal sent
        threads = [threading.Thread(target=lambda i=i: statuses.append(_chat(gateway.url, f"r{sent + i}")))
                   for i in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent += 10
        wait_until(lambda: sum(_published(snapshots)) == sent, timeout=20, what="both snapshots written")
        return min(_published(snapshots)) > 0

    statuses: list[int] = []
    wait_until(both_took_some, timeout=60, interval=0.01, what="requests taken by both workers")
    assert statuses == [200] * sent
    requests = sent
    # every scrape counts all of them, whichever worker answers it (20 scrapes on fresh connections)
    wait_until(lambda: _scraped_total(gateway.url) == requests, timeout=20, what="a scrape counting every request")
    assert [_scraped_total(gateway.url) for _ in range(20)] == [requests] * 20

    # a worker killed outright: its published counts stay (the counter does not go backwards)
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: len(set(_worker_pids(gateway.proc.pid)) - {workers[0]}) == 2, timeout=START,
               what="the killed worker replaced")
    wait_until(lambda: httpx.get(f"{gateway.url}/health/liveliness", timeout=5).status_code == 200, timeout=30,
               what="serving again")
    assert all(_scraped_total(gateway.url) == requests for _ in range(10))
    for i in range(10):
        assert _chat(gateway.url, f"after{i}") == 200
    wait_until(lambda: _scraped_total(gateway.url) == requests + 10, timeout=20, what="the later requests counted")
    assert [_scraped_total(gateway.url) for _ in range(10)] == [requests + 10] * 10
    assert len(list(snapshots.glob("m*.snap"))) == 2  # the new worker took the dead one's slot and its counts over


def _event(team: str, seconds: float = 0.2) -> LogEvent:
    return LogEvent(id=team, trace_id=team, model="m", model_group="g", response_time=seconds,
                    metadata=LogMetadata(user_api_key_team_id=team, user_api_key_hash=f"h-{team}"),
                    attempts=[{"duration": seconds / 2}])


def _total(lines: list[str], name: str = TOTAL, **labels: str) -> float:
    text = "\n".join(lines) + "\n"
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def test_the_scraped_worker_merges_the_others_snapshots_and_gauges(tmp_path):
    one, two = RequestMetrics(), RequestMetrics()
    one.gauge_sources.append(lambda limit: ({"litellm_remaining_team_budget_metric": [(("t1", "one"), 4.0)]}, 0))
    two.gauge_sources.append(lambda limit: ({"litellm_remaining_team_budget_metric": [(("t1", "one"), 3.5),
                                                                                      (("t2", "two"), 9.0)]}, 0))
    first, second = WorkerMetrics(one, tmp_path), WorkerMetrics(two, tmp_path)
    await first.start()
    await second.start()
    try:
        assert (first.slot, second.slot) == (0, 1)
        for _ in range(3):
            one.observe(_event("t1"))
        two.observe(_event("t1", 2.0))
        two.observe(_event("t2"))
        assert _total(first.render()) == 3  # nothing published by the second yet
        second.publish()
        lines = first.render()
        assert _total(lines) == 5
        assert _total(lines, team="t1") == 4
        assert _total(lines, "litellm_request_total_latency_metric_count") == 5
        assert _total(lines, "litellm_request_total_latency_metric_bucket", le="1") == 4  # buckets summed
        # gauges: this worker's value for what it knows, the other's for the rest
        assert _total(lines, "litellm_remaining_team_budget_metric", team="t1") == 4.0
        assert _total(lines, "litellm_remaining_team_budget_metric", team="t2") == 9.0
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_stopped_workers_counts_stay_and_its_slot_carries_them_on(tmp_path):
    gone = RequestMetrics()
    gone.gauge_sources.append(lambda limit: ({"litellm_team_max_budget_metric": [(("t9", ""), 1.0)]}, 0))
    worker = WorkerMetrics(gone, tmp_path)
    await worker.start()
    for _ in range(4):
        gone.observe(_event("t9"))
    await worker.aclose()  # the last snapshot is written at shutdown (no interval has passed)

    alive = RequestMetrics()
    scraped = WorkerMetrics(alive, tmp_path)
    await scraped.start()
    assert scraped.slot == 0 and scraped.carried is not None  # the free slot, with what it counted
    alive.observe(_event("t9"))
    lines = scraped.render()
    assert _total(lines) == 5
    assert _total(lines, "litellm_team_max_budget_metric") == 0  # a gone worker's gauges say nothing now
    scraped.publish()

    other = RequestMetrics()
    reader = WorkerMetrics(other, tmp_path)
    await reader.start()
    try:
        assert _total(reader.render()) == 5  # carried counts are published with the slot's own
    finally:
        await reader.aclose()
        await scraped.aclose()
    assert clear_stale(tmp_path) == 2  # a fresh server starts from zero
    assert not list(tmp_path.glob("*.snap"))


async def test_a_live_workers_snapshot_is_not_cleared(tmp_path):
    metrics = RequestMetrics()
    worker = WorkerMetrics(metrics, tmp_path)
    await worker.start()
    try:
        metrics.observe(_event("t"))
        worker.publish()
        assert clear_stale(tmp_path) == 0  # its lock is held: another server shares the directory
        assert worker.path.exists()
    finally:
        await worker.aclose()


async def test_a_worker_that_cannot_write_its_snapshot_still_serves_its_own_metrics(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    metrics = RequestMetrics()
    worker = WorkerMetrics(metrics, blocker / "metrics")  # not a directory: mkdir fails
    await worker.start()
    try:
        assert worker.slot is None
        assert "cannot publish this worker's metrics" in caplog.text
        metrics.observe(_event("t"))
        assert _total(worker.render()) == 1
    finally:
        await worker.aclose()


async def test_the_merge_keeps_at_most_max_series_and_exact_totals(tmp_path):
    workers = []
    for w in range(2):
        metrics = RequestMetrics(max_series=100)
        for i in range(100):
            metrics.observe(_event(f"w{w}-team-{i}"))
        worker = WorkerMetrics(metrics, tmp_path)
        await worker.start()
        worker.publish()
        workers.append(worker)
    try:
        lines = workers[0].render()
        series = [line for line in lines if line.startswith(f"{TOTAL}{{")]
        assert len(series) == 101  # the other worker's 100 teams folded into __other__
        assert _total(lines) == 200
        assert _total(lines, team="__other__") == 100
    finally:
        for worker in workers:
            await worker.aclose()



def _wire_as_one_piece(metrics: RequestMetrics, gauges: dict, written: float) -> bytes:
    """The snapshot encoded in one piece from the same rows (the layout :class:`_Wire` decodes)."""
    rows = [(key, s.requests, s.successes, s.failures, s.spend, s.input_tokens, s.output_tokens, s.total_tokens,
             [(h.buckets, h.count, h.total) if h is not None else None for h in s.hist])
            for key, s in metrics.series.items()]
    return msgspec.msgpack.encode(_Wire(written=written, overflow=metrics.overflow, series=rows, gauges=gauges))


@pytest.mark.parametrize("count", [0, 1, 15, 16, SNAPSHOT_STEP - 1, SNAPSHOT_STEP, SNAPSHOT_STEP + 1, 1_000])
def test_a_snapshot_written_in_steps_is_the_one_piece_encoding(count):
    metrics = RequestMetrics(max_series=5_000)
    for i in range(count):
        metrics.observe(_event(f"team-{i}", seconds=0.01 * (i % 40)))
    gauges = {"litellm_remaining_team_budget_metric": [(("team-0", "zero"), 1.5)]}
    steps = metrics.snapshot_steps(gauges, 12.5)
    taken = 0
    while True:
        try:
            next(steps)
            taken += 1
        except StopIteration as done:
            stepped = done.value
            break
    assert taken == -(-count // SNAPSHOT_STEP)  # one step per SNAPSHOT_STEP series
    assert stepped == _wire_as_one_piece(metrics, gauges, 12.5) == metrics.snapshot(gauges, 12.5)
    decoded = metrics.decode(stepped)
    assert sum(one.requests for _, one in decoded.series) == count and decoded.gauges == gauges


@pytest.mark.parametrize("length", [0, 15, 16, 0xFFFF, 0x10000])
def test_array_headers_are_msgpacks(length):
    assert msgspec.msgpack.encode([0] * length).startswith(_array_header(length))
    assert len(msgspec.msgpack.encode([0] * length)) == len(_array_header(length)) + length


async def test_the_periodic_publisher_lets_requests_run_between_the_snapshots_steps(tmp_path):
    """1,000 series are written in 4 steps; a coroutine standing for the requests runs between every two of them,
    and the file holds every series whole."""
    metrics = RequestMetrics(max_series=5_000)
    for i in range(1_000):
        metrics.observe(_event(f"team-{i}"))
    ticks = 0
    seen: list[list[int]] = []
    stepping = metrics.snapshot_steps

    def recorded(*args, **kwargs):  # the real steps, noting the ticker's count before each
        steps, marks = stepping(*args, **kwargs), [ticks]
        seen.append(marks)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            yield
            marks.append(ticks)

    metrics.snapshot_steps = recorded

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)  # deliberate: one tick per loop turn

    worker = WorkerMetrics(metrics, tmp_path, interval=0.05)
    await worker.start()
    task = asyncio.get_running_loop().create_task(ticker())
    try:
        metrics.observe(_event("team-0"))  # changed since start(): the next interval publishes
        await wait_until_async(lambda: len(seen) >= 2 and len(seen[1]) == 5, timeout=10,
                               what="the periodic publish to take its steps")
    finally:
        task.cancel()
        await worker.aclose()
    assert len(seen[0]) == 5  # start() publishes at once, in one go: no tick between its steps
    assert len(set(seen[0])) == 1
    periodic = seen[1]
    assert all(later > earlier for earlier, later in zip(periodic, periodic[1:], strict=False)), periodic
    assert sum(one.requests for _, one in metrics.decode(worker.path.read_bytes()).series) == 1_001
