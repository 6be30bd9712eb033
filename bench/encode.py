"""CPU per event of the delivery steps that run on the gateway's event loop, without the network.

``python -m bench.encode [--events 2000]``

Times (best of 7 repeats, µs per event) each sink's span writer, a langfuse request body (spans, request, gzip),
the otel request body, and the spool's write of one event for two sink instances (what a request logging to
langfuse + otel costs it), on events shaped like the gateway's (one user message, one choice, usage, team/key
metadata). No server, no sockets: the numbers are the encoders' alone, to read beside ``bench.profile``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import timeit
from typing import TYPE_CHECKING

import msgspec

from sluicegate.events import LogEvent, LogMetadata
from sluicegate.sinks.spool import Spool
from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import make_event

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("main",)


def _events(count: int) -> list:
    return [make_event(
        metadata=LogMetadata(user_api_key_hash=f"{i:064x}", user_api_key_alias=f"team-{i % 100:04d}-bench",
                             user_api_key_team_id=f"team-{i % 100:04d}", request_id=f"{i:032x}"),
        model_parameters={"temperature": 0.2, "max_tokens": 64},
        messages=[{"role": "user", "content": f"What is the capital of France? ({i})"}]) for i in range(count)]


def _per_event(run: Callable[[], object], events: int) -> float:
    return min(timeit.repeat(run, number=1, repeat=7)) / events * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.encode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args(argv)
    events = _events(args.events)
    rows: list[tuple[str, float]] = []
    try:
        from sluicegate_langfuse_sink import sink as langfuse
        from sluicegate_otel_sink import sink as otel
    except ImportError as exc:
        raise SystemExit(f"bench.encode needs the langfuse and otel sink plugins installed: {exc}") from None

    rows.append(("langfuse: span bytes (wire_span)", _per_event(lambda: [langfuse.wire_span(e) for e in events],
                                                                 len(events))))
    batches = [events[i:i + 18] for i in range(0, len(events), 18)]  # ~18 a batch: 1,000 teams, 5 s linger

    async def bodies() -> None:
        for batch in batches:
            await langfuse._bodies(batch)

    rows.append(("langfuse: request bodies, 18 a batch (spans; gzip from 64 KiB)",
                 _per_event(lambda: asyncio.run(bodies()), len(events))))
    rows.append(("otel: span bytes (wire_span)", _per_event(lambda: [otel.wire_span(e) for e in events],
                                                             len(events))))
    sink = otel.OtelSink(decode_vars(otel.OtelSink.Vars, {"otel_endpoint": "http://127.0.0.1:9/v1/traces"}))
    rows.append(("otel: request bodies, 18 a batch", _per_event(lambda: [sink.encode(b) for b in batches],
                                                                 len(events))))
    with tempfile.TemporaryDirectory() as directory:
        spool = Spool(directory, max_bytes=1 << 30, segment_bytes=4 << 20, fsync=False)
        spool.acquire()
        logs = [spool.log_for(f"instance-{i}", b'{"callback_name": "bench", "callback_vars": {}}')
                for i in range(200)]

        def spooled() -> None:
            for index, event in enumerate(events):  # one event, two instances: a request logging to two sinks
                encoded = msgspec.json.encode(event)  # as Dispatcher.submit hands it over: encoded once
                for log in (logs[(2 * index) % 200], logs[(2 * index + 1) % 200]):
                    log.mem_seq = log.add(encoded)
            spool.flush()
            for log in logs:
                log.ack(log.next_seq - 1)

        rows.append(("spool: one event for two instances (encode + write + ack)", _per_event(spooled, len(events))))
        decoder = msgspec.json.Decoder(LogEvent)
        encoded_events = [msgspec.json.encode(e) for e in events]
        rows.append(("dispatcher: decoding an event when its batch goes out",
                     _per_event(lambda: [decoder.decode(e) for e in encoded_events], len(events))))
        spool.release()
    width = max(len(name) for name, _ in rows)
    print(f"{'step':{width}}  µs per event")
    for name, micros in rows:
        print(f"{name:{width}}  {micros:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
