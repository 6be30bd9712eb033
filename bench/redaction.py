"""CPU per event of redaction policies, and what they add to the serving path (nothing) and to delivery.

``python -m bench.redaction [--events 500] [--teams 1000] [--repeats 5]``

Every row is µs of this process's CPU time per event (not wall time: the machine is shared), measured
``--repeats`` times; it prints the median and the spread (lowest–highest). Rows:
- the floors of this machine for the same text (one ``in`` test, one regular-expression pass, the event's JSON
  encoding), to read the rest as ratios: on a shared 2-core box the absolute numbers move by 3x between runs;
- a 2 KB conversation (system prompt, five turns, an answer) with all built-in detectors (regex with one pattern
  that starts with a literal, ``EMP-\d{6}``: a pattern starting with ``\b`` or a class is tried at every position
  and costs ~15 times more): ordinary text (nothing to replace), and dense text (the same with an e-mail address,
  a phone number, a card number, an IBAN, an IP address and an API key in one turn), each through the policy's
  ``apply`` (the walk that copies the event's containers, the detectors, the results put back, the record); then
  the detectors alone, one after the other over the dense event's strings joined as ``apply`` joins them (each
  detector's text is the one the previous returned), and each detector alone on the dense text;
- 1,000 teams logging to a file sink each, half with a policy: ``Dispatcher.submit`` per event (the serving path)
  with no policy anywhere and with the half, and the delivery side's decode + redaction per event for the same mix.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import tempfile
import time
import timeit
from typing import TYPE_CHECKING, Any

import msgspec

from sluicegate.config import parse_settings
from sluicegate.default_plugins.redactors import BUILTIN_REDACTORS
from sluicegate.events import LogMetadata
from sluicegate.plugins import get_plugin_manager
from sluicegate.redaction.base import RedactorRegistry
from sluicegate.redaction.policy import PolicyCompiler
from sluicegate.routing import LoggingResolver
from sluicegate.sinks.dispatcher import Dispatcher
from sluicegate.sinks.registry import SinkRegistry
from sluicegate.testing import make_event

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("main",)

ALL = {"redactors": ["email", "phone", "card", "iban", "ip", "secret",
                     {"regex": {"patterns": {"employee_id": r"EMP-\d{6}\b"}}}]}
PROSE = ("Thanks for the quick answer. I looked at the configuration again and I think the problem is in the way "
         "our team sets up the logging destinations; the gateway starts, but the traces never show up in the "
         "project we expect. Could you walk me through the steps once more, slowly, and tell me what to check "
         "first when nothing arrives? We run version 2 of the deployment since March, with about 40 users. ")
PII = ("My colleague ann.smith@example.com (phone +44 20 7946 0958) paid with 4111 1111 1111 1111 from "
       "DE89 3704 0044 0532 0130 00; the server at 203.0.113.7 logged a key sk-proj-Ab3dEf5gHi7jKl9mNo1pQr3sTu5v. ")


def conversation(seed: int, with_pii: bool) -> Any:
    rng = random.Random(seed)
    turns = [{"role": "system", "content": "You are a helpful assistant for the Sluicegate gateway. Be precise."}]
    for n in range(5):
        text = (PII if with_pii and n == 2 else "") + PROSE[rng.randrange(40):] + f" (turn {n}, ticket {seed})"
        turns.append({"role": "user" if n % 2 == 0 else "assistant", "content": text[:300 + rng.randrange(40)]})
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": PROSE[:260]}}],
              "usage": {"prompt_tokens": 400, "completion_tokens": 60, "total_tokens": 460}}
    return make_event(messages=turns, response=answer, metadata=LogMetadata(
        user_api_key_team_id=f"team-{seed % 1000:04d}", request_id=f"{seed:032x}"))


def per_event(run: Callable[[], object], events: int) -> float:
    """µs of this process's CPU per event, best of 7 (CPU time, not wall time: the machine is shared, and time
    spent preempted by other jobs is not the code's)."""
    return min(timeit.repeat(run, number=1, repeat=7, timer=time.process_time)) / events * 1e6


def per_item(apply: Callable[[Any], object], items: list[Any], chunk: int = 20) -> float:
    """µs per item: the best of 7 runs over each chunk of ``chunk`` items, summed. Short runs: on a shared machine a
    long loop is preempted somewhere, and best-of-7 of long loops measures the neighbours."""
    total = 0.0
    for index in range(0, len(items), chunk):
        part = items[index:index + chunk]
        total += min(timeit.repeat(lambda part=part: [apply(x) for x in part], number=1, repeat=7,
                                   timer=time.process_time))
    return total / len(items) * 1e6


def teams_settings(teams: int, directory: str, with_policies: bool) -> Any:
    entries = []
    for index in range(teams):
        entry: dict[str, Any] = {"team_id": f"team-{index:04d}", "callbacks": ["file"],
                                 "path": os.path.join(directory, f"team-{index:04d}.jsonl")}
        if with_policies and index % 2 == 0:
            entry["redaction"] = ALL
        entries.append(entry)
    return parse_settings({"litellm_settings": {"default_team_settings": entries},
                           "sluicegate_settings": {"delivery": {"spool": False, "batch_interval": 3600,
                                                                "max_batch_interval": 3600}}})


async def serving_and_delivery(teams: int, events: list[Any], with_policies: bool) -> tuple[float, float, float]:
    """(submit µs/event, delivery decode+redact µs/event, resolver build ms) for ``teams`` teams."""
    with tempfile.TemporaryDirectory() as directory:
        settings = teams_settings(teams, directory, with_policies)
        pm = get_plugin_manager({})
        started = timeit.default_timer()
        resolver = LoggingResolver(settings, SinkRegistry.from_plugin_manager(pm), pm)
        build_ms = (timeit.default_timer() - started) * 1e3
        sets = [resolver.team_config[f"team-{i:04d}"] for i in range(teams)]
        dispatcher = Dispatcher(settings.sluicegate_settings.delivery)
        submit = dispatcher.submit
        pairs = [(event, sets[i % teams]) for i, event in enumerate(events)]

        def serve() -> None:
            for event, callbacks in pairs:
                submit(event, callbacks)

        submit_us = per_event(serve, len(pairs))
        slots = list(dispatcher.pool.slots.values())

        def deliver() -> None:
            dispatcher.redaction_memo = type(dispatcher.redaction_memo)()
            dispatcher._recent, dispatcher._recent_older = {}, {}
            for slot in slots:
                dispatcher._decode(slot, slot.queue[:7])

        delivered = sum(min(len(s.queue), 7) for s in slots)
        deliver_us = per_event(deliver, delivered)
        for slot in slots:  # nothing is sent: the queues are dropped with the dispatcher
            slot.queue.clear()
        return submit_us, deliver_us, build_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redaction", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--teams", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    compiler = PolicyCompiler(RedactorRegistry.from_plugin_manager(get_plugin_manager({})))
    policy = compiler.compile(ALL)
    assert policy is not None
    dense = [conversation(i, True) for i in range(args.events)]
    ordinary = [conversation(i, False) for i in range(args.events)]

    def size(event: Any) -> int:
        return sum(len(m["content"]) for m in event.messages) + len(event.response["choices"][0]["message"]["content"])

    texts = ["\x00".join([m["content"] for m in e.messages] + [e.response["choices"][0]["message"]["content"]])
             for e in dense]
    digit = re.compile(r"[0-9]")
    rows: list[tuple[str, Callable[[], float]]] = [
        ("floor: one `in` test over the event's text", lambda: per_event(lambda: ["zq" in t for t in texts],
                                                                          len(texts))),
        ("floor: one regex pass ([0-9]) over the event's text",
         lambda: per_event(lambda: [digit.search(t) for t in texts], len(texts))),
        ("floor: the event's JSON encoding (msgspec)",
         lambda: per_event(lambda: [msgspec.json.encode(e) for e in dense], len(dense))),
        (f"all built-in detectors, ordinary text ({size(ordinary[0]):,} chars, nothing to replace)",
         lambda: per_item(policy.apply, ordinary)),
        (f"all built-in detectors, dense text ({size(dense[0]):,} chars, 6 values to replace)",
         lambda: per_item(policy.apply, dense)),
        ("  the detectors alone: each over the dense event's strings joined, as `apply` runs them",
         lambda: per_item(lambda text: [redactor.redact(text) for redactor in policy.redactors], texts)),
    ]
    for redactor_class in BUILTIN_REDACTORS:
        if redactor_class.name == "regex":
            continue
        alone = compiler.compile({"redactors": [redactor_class.name]})
        assert alone is not None
        rows.append((f"  {redactor_class.name} alone, dense text", lambda alone=alone: per_item(alone.apply, dense)))
    results = [(name, [measure() for _ in range(args.repeats)]) for name, measure in rows]
    for with_policies in (False, True):
        label = "half with a policy" if with_policies else "no policy"
        runs = [asyncio.run(serving_and_delivery(args.teams, dense, with_policies)) for _ in range(args.repeats)]
        results.append((f"{args.teams} teams, {label}: submit (serving path)", [r[0] for r in runs]))
        results.append((f"{args.teams} teams, {label}: delivery decode + redaction", [r[1] for r in runs]))
        results.append((f"{args.teams} teams, {label}: resolving every team at start-up (ms, not µs)",
                        [r[2] for r in runs]))
    width = max(len(name) for name, _ in results)
    print(f"{'row':{width}}  {'median':>8}  spread (µs of CPU per event, {args.repeats} repeats)")
    for name, values in results:
        print(f"{name:{width}}  {statistics.median(values):8.1f}  {min(values):.1f}–{max(values):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
