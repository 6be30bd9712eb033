"""CPU per event of the whole delivery pipeline, in one process, without the HTTP server in front of it.

``python -m bench.pipeline [--teams 1000] [--rate 4000] [--seconds 6] [--spool/--no-spool]``

What a gateway request logging to langfuse + otel costs the event loop once its event exists: ``submit`` (routing
to two sink instances, the spool's bookkeeping), the spool writes, the linger timers, encoding, the HTTP POSTs to
loopback receivers (``bench.mock_upstream --mode receiver`` on the load CPU) and the acknowledgements. Events
arrive at ``--rate`` a second spread over every team (as ``bench.run``'s wrk script spreads requests over keys):
``--warmup`` seconds first (longer than one ``max_batch_interval``, so lingering batches are as full as a steady
load makes them), then the measured ``--seconds``, then the dispatcher drains, unmeasured. In a steady state the
window delivers about as many events as it accepts, so its CPU over its events is the cost per event; a drain
counted in would add a last round of part-filled batches that a running gateway never sends. The driver's own
cost is measured by the same loop with no routes and subtracted. This process pins itself to the server CPU. The number moves far less between runs than
``bench.run``'s rows (no HTTP server, no wrk), so it is the one to A/B a delivery change with.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from sluicegate.config import DeliverySettings
from sluicegate.events import LogEvent, LogMetadata
from sluicegate.routing import CallbackSet, Route, instance_id_for
from sluicegate.sinks.base import CallbackVars, Sink
from sluicegate.sinks.dispatcher import Dispatcher
from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import make_event

from bench.run import Procs, add_cpu_options, pin_to_server_cpu, receiver_counts, start_receiver, team_ids

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ("main",)


class _DiscardVars(CallbackVars):
    team: str = ""


class _DiscardSink(Sink):
    """Accepts every batch and does nothing with it: what the dispatcher and spool cost without a sink's own work
    (``--sinks discard,discard`` stands for a request logging to two destinations). Bench-only, never registered."""

    callback_name = "discard"
    Vars = _DiscardVars
    max_batch_size = 200

    async def send(self, batch: Sequence[LogEvent]) -> None:
        return None


def _sink_classes(names: list[str]) -> list[tuple[type[Sink], Callable[[str, dict[str, str], int], dict[str, Any]]]]:
    from sluicegate_langfuse_sink.sink import LangfuseSink
    from sluicegate_otel_sink.sink import OtelSink

    known: dict[str, tuple[type[Sink], Callable[[str, dict[str, str], int], dict[str, Any]]]] = {
        "langfuse": (LangfuseSink, lambda team, receivers, _: {
            "langfuse_public_key": f"pk-lf-{team}", "langfuse_secret_key": f"sk-lf-{team}",
            "langfuse_host": receivers["langfuse"]}),
        "otel": (OtelSink, lambda team, receivers, _: {
            "otel_endpoint": receivers["otel"] + "/v1/traces", "otel_headers": f"x-bench-team={team}",
            "otel_service_name": f"sluicegate-{team}"}),
        "discard": (_DiscardSink, lambda team, _, index: {"team": f"{team}-{index}"}),
    }
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"--sinks: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    return [known[name] for name in names]


def _routes(teams: list[str], receivers: dict[str, str], names: list[str]) -> list[CallbackSet]:
    sets = []
    for team in teams:
        routes = []
        for index, (sink_class, make_vars) in enumerate(_sink_classes(names)):
            callback_vars = decode_vars(sink_class.Vars, make_vars(team, receivers, index))
            routes.append(Route(callback_name=sink_class.callback_name,
                                instance_id=instance_id_for(sink_class.callback_name, callback_vars),
                                sink_class=sink_class, callback_vars=callback_vars, on_success=True,
                                on_failure=True, redact=False))
        sets.append(CallbackSet(routes=tuple(routes), source="team_config"))
    return sets


def _event(team: str, index: int):
    return make_event(
        metadata=LogMetadata(user_api_key_hash=f"{hash(team) & (2**64 - 1):064x}", user_api_key_alias=f"{team}-key",
                             user_api_key_team_id=team, request_id=f"{index:032x}"),
        messages=[{"role": "user", "content": "Say hello in one short sentence."}])


async def _drive(dispatcher: Dispatcher | None, sets: list[CallbackSet], teams: list[str], rate: float,
                 seconds: float) -> int:
    """Submit ``rate`` events a second for ``seconds``, in 5 ms ticks; returns the number submitted."""
    loop = asyncio.get_running_loop()
    tick = 0.005
    per_tick = rate * tick
    start = loop.time()
    sent = 0
    owed = 0.0
    count = len(teams)
    while loop.time() - start < seconds:
        owed += per_tick
        while owed >= 1:
            owed -= 1
            team = sent % count
            event = _event(teams[team], sent)
            if dispatcher is not None:
                dispatcher.submit(event, sets[team])
            sent += 1
        await asyncio.sleep(tick)
    return sent


async def _run(args: argparse.Namespace, receivers: dict[str, str],
               spool_dir: str | None) -> tuple[float, int, dict[str, int]]:
    teams = team_ids(args.teams)
    sets = _routes(teams, receivers, args.sinks.split(","))
    settings = DeliverySettings(spool=spool_dir is not None)
    if args.segment_mb:
        settings = msgspec.structs.replace(settings, spool_segment_bytes=args.segment_mb << 20)
    if args.delivery:  # what-if: key=value,... as in bench.run's BENCH_DELIVERY
        changes = dict(item.split("=", 1) for item in args.delivery.split(",") if item)
        settings = msgspec.convert({**msgspec.structs.asdict(settings), **changes}, DeliverySettings, strict=False)
    if args.mode == "process":
        # The serving worker's side (its log) and the delivery process's side (tail -> dispatcher -> spool ->
        # progress) in this one process: their CPU together is the total per event of `--delivery process`.
        dispatcher = await _ProcessPipeline.start(settings, spool_dir or str(Path(tempfile.mkdtemp())))
    else:
        dispatcher = Dispatcher(settings, spool_dir=spool_dir)
        await dispatcher.start()
    if args.gc == "gateway":  # what a served gateway does once started (Gateway.tune_gc), before any traffic
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 50, 100)
    elif args.gc == "off":
        gc.disable()
    # warm: one event per team creates every sink instance (as bench.run's warm-up request per key does)
    for team in range(len(teams)):
        dispatcher.submit(_event(teams[team], team), sets[team])
    deadline = time.monotonic() + 60
    while dispatcher.pending() and time.monotonic() < deadline:  # drain() would end lingering for good
        await asyncio.sleep(0.05)
    await _drive(dispatcher, sets, teams, args.rate, args.warmup)  # to a steady state, unmeasured
    posts_before = await asyncio.to_thread(receiver_counts, receivers)
    times = os.times()
    cpu = time.process_time()
    sent = await _drive(dispatcher, sets, teams, args.rate, args.seconds)
    cpu = time.process_time() - cpu
    after = os.times()
    posts_after = await asyncio.to_thread(receiver_counts, receivers)
    await dispatcher.aclose(60)
    print(f"  user {(after.user - times.user) / max(sent, 1) * 1e6:.1f} µs, system "
          f"{(after.system - times.system) / max(sent, 1) * 1e6:.1f} µs per event (driver included)")
    gc.enable()
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    return cpu, sent, {name: posts_after[name] - posts_before[name] for name in posts_after}


class _ProcessPipeline:
    """``submit`` appends to a serving worker's log (:class:`~sluicegate.delivery.worker_log.WorkerLog`); a
    :class:`~sluicegate.delivery.service.DeliveryService` on the same loop reads it into its dispatcher."""

    def __init__(self, worker: Any, service: Any) -> None:
        self.worker = worker
        self.service = service
        self.submit = worker.submit

    @classmethod
    async def start(cls, settings: DeliverySettings, base: str) -> _ProcessPipeline:
        from sluicegate.config import parse_settings
        from sluicegate.delivery.service import DeliveryService
        from sluicegate.delivery.worker_log import WorkerLog

        delivery = {**msgspec.to_builtins(settings), "spool_dir": base}
        full = parse_settings({"general_settings": {"database_url": f"sqlite+aiosqlite:///{base}/bench.db"},
                               "sluicegate_settings": {"delivery": delivery}})
        logging.getLogger("sluicegate.delivery").setLevel(logging.ERROR)  # no database here: the change poll
        service = DeliveryService(full)
        await service.start()
        worker = WorkerLog(full.sluicegate_settings.delivery, base)
        await worker.start()
        return cls(worker, service)

    def pending(self) -> int:
        return self.worker.pending() + self.service.dispatcher.pending() + (1 if self.service.unread_bytes() else 0)

    async def aclose(self, grace: float) -> None:
        await self.worker.aclose()
        await self.service.aclose()


async def _baseline(args: argparse.Namespace) -> tuple[float, int]:
    teams = team_ids(args.teams)
    cpu = time.process_time()
    sent = await _drive(None, [], teams, args.rate, args.seconds)
    return time.process_time() - cpu, sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=4000.0, help="events a second (default 4000)")
    parser.add_argument("--seconds", type=float, default=6.0, help="the measured window (default 6)")
    parser.add_argument("--warmup", type=float, default=6.0,
                        help="seconds of the same load before the window, unmeasured (default 6: one max_batch_interval"
                             " and a second)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is kept (default 3)")
    parser.add_argument("--sinks", default="langfuse,otel",
                        help="routes of every team, comma-separated: langfuse, otel, discard (default langfuse,otel)")
    parser.add_argument("--delivery", default="",
                        help="what-if delivery settings, key=value,... (e.g. max_sends_per_second=200)")
    parser.add_argument("--segment-mb", type=int, default=0,
                        help="spool_segment_bytes in MiB (default: the setting's default)")
    parser.add_argument("--spool", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--mode", choices=("inline", "process"), default="inline",
                        help="inline: the dispatcher alone; process: a serving worker's log read by the delivery "
                             "process's work, both in this process (their total CPU per event)")
    parser.add_argument("--gc", choices=("gateway", "default", "off"), default="gateway",
                        help="collector settings: as a served gateway tunes them (default), Python's, or off")
    add_cpu_options(parser)
    args = parser.parse_args(argv)
    import uvloop

    multi = pin_to_server_cpu(args)
    tmp = Path(tempfile.mkdtemp(prefix="sluicegate-pipeline-"))
    procs = Procs(tmp)
    receivers = {}
    try:
        for name in ("langfuse", "otel"):
            receivers[name] = start_receiver(procs, name, args.load_cpu if multi else None)
        base_cpu, base_sent = min(uvloop.run(_baseline(args)) for _ in range(args.repeat))
        driver = base_cpu / base_sent
        best = None
        for attempt in range(args.repeat):
            spool_dir = str(tmp / f"spool-{attempt}") if args.spool else None
            cpu, sent, posts = uvloop.run(_run(args, receivers, spool_dir))
            per_event = cpu / sent - driver
            print(f"run {attempt + 1}: {sent:,} events in {args.seconds:.0f} s (after {args.warmup:.0f} s of warm-up), "
                  f"pipeline {per_event * 1e6:.1f} µs CPU per event (driver {driver * 1e6:.1f} µs subtracted); POSTs "
                  + ", ".join(f"{k} {v:,}" for k, v in posts.items()), flush=True)
            if best is None or per_event < best:
                best = per_event
        print(f"best: {best * 1e6:.1f} µs CPU per event ({args.teams} teams x ({' + '.join(args.sinks.split(','))}), "
              f"{args.rate:.0f} events/s, spool {'on' if args.spool else 'off'}, delivery {args.mode})")
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
