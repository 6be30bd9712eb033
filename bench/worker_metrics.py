"""How long a worker's metrics snapshot holds the event loop (``python -m bench.worker_metrics``).

``python -m bench.worker_metrics [--teams 10000] [--max-series 2000] [--runs 5]``

Each serving worker of ``sluicegate serve --workers N`` writes a snapshot of its series and gauges once a second
(:mod:`sluicegate.worker_metrics`). With budgets, the gauges come from the spend ledger's counters: ``--teams``
teams and as many keys, each with a budget and a request checked through the real
:class:`~sluicegate.limits.spend.SpendLedger` (a temporary SQLite file), and a request observed per key (the series
stop at ``--max-series``). A ticker coroutine runs beside the publish and records the longest time between two of
its loop turns: how long a request arriving then would wait. Printed for the publish in one go
(:meth:`WorkerMetrics.publish`, what start-up and shutdown use) and in the periodic publisher's steps
(:meth:`WorkerMetrics.publish_in_steps`: the loop runs between the gauges and every
:data:`~sluicegate.metrics.SNAPSHOT_STEP` series), best of ``--runs`` each.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from sluicegate.auth import AuthContext
from sluicegate.config import parse_settings
from sluicegate.db.store import KeyRecord, Store, TeamRecord
from sluicegate.events import LogEvent, LogMetadata
from sluicegate.limits.spend import SpendLedger
from sluicegate.metrics import SNAPSHOT_STEP, RequestMetrics
from sluicegate.worker_metrics import WorkerMetrics

__all__ = ("main",)

BUDGET = {"max_budget": 1e9, "soft_budget": 1e9, "budget_duration": "30d"}


async def _publish_once(worker: WorkerMetrics, metrics: RequestMetrics, steps: bool) -> tuple[float, float]:
    """One publish (something changed, so it writes): its wall time and the loop's longest block, in ms."""
    metrics.observe(_event("team-0"))
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0)  # deliberate: one sample per loop turn
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    if steps:
        await worker.publish_in_steps()
    else:
        worker.publish()
    took = time.perf_counter() - started
    stop.set()
    await task
    return took * 1e3, max(gaps) * 1e3


def _event(team: str) -> LogEvent:
    return LogEvent(id=team, trace_id=team, model="m", model_group="g", response_time=0.2, response_cost=1e-6,
                    metadata=LogMetadata(user_api_key_team_id=team, user_api_key_hash=f"h-{team}"),
                    attempts=[{"duration": 0.1}])


async def run(teams: int, max_series: int, runs: int, directory: Path) -> None:
    url = f"sqlite+aiosqlite:///{directory}/{uuid.uuid4().hex[:8]}.db"
    store = Store(url)
    await store.migrate()
    ledger = SpendLedger(store, parse_settings({"general_settings": {"database_url": url}}))
    metrics = RequestMetrics(max_series=max_series)
    metrics.gauge_sources.append(ledger.gauges)
    for i in range(teams):
        team = TeamRecord(team_id=f"team-{i}", team_alias=f"alias-{i}", **BUDGET)
        key = KeyRecord(token_id=f"{i:064x}", key_name="sk-...abcd", key_alias=f"key-{i}", team_id=team.team_id,
                        **BUDGET)
        await ledger.check(AuthContext(token_id=key.token_id, is_admin=False, key=key, team=team), None)
        metrics.observe(_event(team.team_id))
    worker = WorkerMetrics(metrics, directory / "metrics", interval=3600)
    await worker.start()
    print(f"{teams} budgeted teams and keys ({len(ledger.counters)} budget counters), {len(metrics.series)} series "
          f"(max_series {max_series}), {SNAPSHOT_STEP} series per step; best of {runs}:", flush=True)
    results = {}
    for label, steps in (("in one go", False), ("in steps", True)):
        best = [1e9, 1e9]
        for _ in range(runs):
            took, block = await _publish_once(worker, metrics, steps)
            best = [min(best[0], took), min(best[1], block)]
        results[label] = best
        print(f"  {label:9s}: publish {best[0]:5.1f} ms, longest loop block {best[1]:5.1f} ms", flush=True)
    one, stepped = results["in one go"], results["in steps"]
    print(f"  steps / one go: publish {stepped[0] / one[0]:.2f}x, longest block {stepped[1] / one[1]:.2f}x",
          flush=True)
    await worker.aclose()
    await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teams", type=int, default=10_000)
    parser.add_argument("--max-series", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(args.teams, args.max_series, args.runs, Path(directory)))


if __name__ == "__main__":
    main()
